"""The MLflow deployment plugin (target ``triton``): :class:`TritonDeploymentClient`, ``run_local``,
``target_help``, and what ``list``/``get`` read from Triton alone. It calls the rollout layer.
"""
