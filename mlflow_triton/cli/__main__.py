from mlflow_triton.cli.commands import cli

cli()
