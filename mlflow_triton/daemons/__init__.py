"""Long-running processes (top layer beside the CLI): the webhook receiver, the ``/healthz`` and
``/metrics`` endpoint, Prometheus metrics and log formatting for ``watch`` and ``serve-webhooks``.
"""
