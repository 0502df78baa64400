"""The ``mlflow-triton`` command line (top layer): parses options, calls the layers below, echoes.

The console script ``mlflow-triton`` is :data:`cli`; ``python -m mlflow_triton.cli`` runs it too.
"""

from mlflow_triton.cli.commands import cli

__all__ = ["cli"]
