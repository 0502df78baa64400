"""Generating Triton's ``config.pbtxt``: tensor specs, the ``ModelConfig`` message, GPU options,
user overrides and ``model_warmup``.
"""
