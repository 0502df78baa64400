"""``mlflow-triton``: registry-driven promotion from the shell.

Each command parses its options, calls :mod:`mlflow_triton.promotion` (or
:mod:`mlflow_triton.daemons.webhooks`) and echoes the result; logs go to stderr::

    mlflow-triton sync --alias production --model fraud --repo s3://models/triton \\
        --triton http://t1:8000,http://t2:8000 -C instance_kind=gpu
    mlflow-triton watch --spec promotion.yaml --interval 30
    MLFLOW_TRITON_WEBHOOK_SECRET=... mlflow-triton serve-webhooks --spec promotion.yaml --port 8080
    mlflow-triton rollback fraud [--to 3] [--set-alias production]
    mlflow-triton --log-format json watch --spec promotion.yaml --listen 0.0.0.0:9100
    mlflow-triton dev       # moto S3 + MLflow + tritonserver on loopback until Ctrl-C

Exit status: 0 on success, 1 when a model failed (its previous version still serves) or a
command was refused, 2 for bad usage, 128 + the signal number (130 for Ctrl-C) when SIGINT or
SIGTERM stopped ``sync`` or ``rollback`` (a line on stderr says what serves; see
:mod:`mlflow_triton.rollout.interrupts`). An error prints as one line and a hint;
``mlflow-triton --debug COMMAND`` also prints its traceback.

Everything a command prints (reports, ``Error:`` lines, tracebacks) and logs has credentials in
URLs masked (:mod:`mlflow_triton.core.masking`): the group scrubs every exception that leaves a
command, the log handler masks every line.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from mlflow.exceptions import MlflowException

from mlflow_triton import promotion
from mlflow_triton.cli.errors import ErrorReportingGroup
from mlflow_triton.core.masking import mask_secrets
from mlflow_triton.daemons.log_format import configure_logging
from mlflow_triton.promotion import PromotionSpec, SyncReport
from mlflow_triton.rollout import interrupts


def _parse_config(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    config = {}
    for pair in values:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadOptionUsage(param.name or "config", f"-C expects NAME=VALUE, got {pair!r}.", ctx)
        config[key.strip()] = value
    return config


# -- options shared by the commands (defined once, like mlflow/deployments/cli.py) -----------------
spec_file = click.option(
    "--spec", "spec_path", type=click.Path(exists=True, dir_okay=False),
    help="YAML promotion spec (models, alias, repository, triton, config).",
)  # fmt: skip
repository = click.option(
    "--repo", "repository", metavar="URI",
    help="Triton model repository, s3://bucket/prefix (default: TRITON_MODEL_REPO).",
)  # fmt: skip
triton = click.option(
    "--triton", metavar="URL[,URL...]",
    help="Triton replicas reading the repository (default: TRITON_URL).",
)  # fmt: skip
config = click.option(
    "--config", "-C", "config", multiple=True, callback=_parse_config, metavar="NAME=VALUE",
    help="Deployment config key (repeatable), as for `mlflow deployments -t triton`.",
)  # fmt: skip
smoke = click.option(
    "--smoke-test/--no-smoke-test", default=None,
    help="Check every replica against the model run locally before it counts (default: on).",
)  # fmt: skip
models = click.option(
    "--model", "-m", "models", multiple=True, metavar="REGISTERED[=DEPLOYMENT]",
    help="Registered model to promote (repeatable); with --spec, selects models from it.",
)  # fmt: skip
alias = click.option("--alias", "-a", help="Registry alias to follow (default: production).")
lease_wait = click.option(
    "--lease-wait", type=float, default=None, metavar="SECONDS",
    help="How long to wait for a concurrent publisher of the same model (default: 300).",
)  # fmt: skip


def spec_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((spec_file, models, alias, repository, triton, config, smoke, lease_wait)):
        fn = option(fn)
    return fn


def _load(require_models: bool = True, **options: Any) -> PromotionSpec:
    return promotion.load_spec(
        options.get("spec_path"), models=options.get("models", ()), alias=options.get("alias"),
        repository=options.get("repository"), triton=options.get("triton"),
        config=options.get("config"), smoke_test=options.get("smoke_test"),
        lease_wait_s=options.get("lease_wait"), require_models=require_models,
    )  # fmt: skip


@contextmanager
def _errors() -> Iterator[None]:
    """MlflowException → ``Error: <message>`` (credentials masked) and exit status 1."""
    try:
        yield
    except MlflowException as err:
        raise click.ClickException(mask_secrets(err.message)) from err


@contextmanager
def _stop_on_signals(then: str = "stopping after the current round") -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM (logged: ``Received SIGINT: <then>``), handlers restored after."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        logging.getLogger(__name__).warning("Received %s: %s", signal.Signals(signum).name, then)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _echo_report(report: SyncReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for model in report.models:
            click.echo(model.describe())


def _echo_interrupted(report: SyncReport, signum: int) -> None:
    """The last line of an interrupted ``sync``: which models stopped before their switch."""
    stopped = [m.deployment for m in report.interrupted]
    said = f"stopped before the switch, nothing changed for: {', '.join(stopped)}" if stopped else "no rollout stopped"
    others = "; the other models are as reported above" if len(stopped) < len(report.models) else ""
    click.echo(f"Interrupted by {signal.Signals(signum).name}: {said}{others}", err=True)


def _parse_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected [HOST:]PORT (e.g. 0.0.0.0:9100), got {value!r}.", ctx, param)
    return host.strip("[]") or "0.0.0.0", int(port)


tls_cert = click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
                        help="PEM certificate (chain): serve HTTPS (with --tls-key).")  # fmt: skip
tls_key = click.option("--tls-key", type=click.Path(exists=True, dir_okay=False),
                       help="PEM private key of --tls-cert.")  # fmt: skip


@click.group(cls=ErrorReportingGroup)  # errors: one line and a hint, masked; --debug adds the traceback
@click.option(
    "--log-level", default="INFO", show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)  # fmt: skip
@click.option(
    "--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
    help="json: one JSON object per log line (time, level, logger, message).",
)  # fmt: skip
def cli(log_level: str, log_format: str) -> None:
    """Roll MLflow Model Registry aliases out to NVIDIA Triton, on every replica."""
    configure_logging(log_level, log_format)  # type: ignore[arg-type]


@cli.command()
@spec_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sync(as_json: bool, **options: Any) -> None:
    """Reconcile once: publish each alias's version where another one serves.

    SIGINT/SIGTERM: each model stops before its switch (nothing changes for it), switches in
    progress finish; the report says what serves, and the exit status is 128 + the signal.
    """
    with _errors():
        spec = _load(**options)
    with interrupts.cooperative() as cancel:
        report = promotion.sync(spec, cancel=cancel)
    _echo_report(report, as_json)
    if cancel.is_set():
        _echo_interrupted(report, cancel.signum)
        raise SystemExit(128 + cancel.signum)
    if not report.ok:
        for failure in report.failures:
            click.echo(mask_secrets(f"Error: {failure.deployment}: {failure.error}"), err=True)
        raise SystemExit(1)


@cli.command()
@spec_options
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="Pause between reconciliation rounds.")  # fmt: skip
@click.option("--listen", callback=_parse_listen, metavar="[HOST:]PORT",
              help="Serve GET /healthz and /metrics (Prometheus) here, e.g. 0.0.0.0:9100.")  # fmt: skip
@tls_cert
@tls_key
def watch(interval: float, listen: tuple[str, int] | None, tls_cert: str | None, tls_key: str | None,
          **options: Any) -> None:  # fmt: skip
    """Reconcile every --interval seconds until SIGINT/SIGTERM (exits 0 after the round)."""
    from mlflow_triton.daemons.metrics import RolloutMetrics
    from mlflow_triton.daemons.ops_server import BackgroundServer, Heartbeat, TLSFiles, ops_routes

    metrics = RolloutMetrics()
    health = Heartbeat(stale_after_s=3 * interval + Heartbeat.GRACE_S)
    server = None
    with _errors():
        spec = _load(**options)
        if listen is not None:
            routes = ops_routes(metrics.registry, health.check)
            server = BackgroundServer(routes, *listen, TLSFiles.from_options(tls_cert, tls_key)).start()
            logging.getLogger(__name__).info("Serving /healthz and /metrics on %s", server.url)

        def on_report(report: SyncReport) -> None:
            metrics.record(report, "watch")
            health.beat()

        try:
            with _stop_on_signals() as stop:
                promotion.watch(spec, interval_s=interval, stop_event=stop, on_report=on_report)
        finally:
            if server is not None:
                server.stop()


@cli.command("serve-webhooks")
@spec_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@tls_cert
@tls_key
def serve_webhooks(host: str, port: int, tls_cert: str | None, tls_key: str | None, **options: Any) -> None:
    """Roll out alias moves signalled by MLflow webhooks (secret: MLFLOW_TRITON_WEBHOOK_SECRET).

    Also serves GET /healthz and /metrics (Prometheus).
    """
    from mlflow_triton.daemons.ops_server import TLSFiles
    from mlflow_triton.daemons.webhooks import WebhookReceiver

    with _errors():
        spec = _load(**options)
        receiver = WebhookReceiver(spec, host=host, port=port, tls=TLSFiles.from_options(tls_cert, tls_key))
    with _stop_on_signals() as stop:
        receiver.start()
        click.echo(f"Listening for MLflow webhooks on {receiver.url}")
        stop.wait()
    receiver.shutdown()


@cli.command()
@click.argument("name")
@click.option("--to", "to_version", type=click.IntRange(min=1), help="Repository version to serve "
              "(default: the previous serving version, never a refused one or one rolled back "
              "from, as the serving history records).")  # fmt: skip
@click.option("--set-alias", metavar="ALIAS", help="Also point this registry alias at the rolled-back "
              "version, so that sync/watch do not roll forward again.")  # fmt: skip
@spec_file
@repository
@triton
@config
@smoke
def rollback(name: str, to_version: int | None, set_alias: str | None, **options: Any) -> None:
    """Serve the previous good version of deployment NAME again, verified, on every replica.

    SIGINT/SIGTERM before the switch changes nothing; during it, the switch finishes first.
    Either way one line on stderr says which version serves (exit status 128 + the signal).
    """
    with _errors():
        spec = _load(require_models=False, **options)
        with interrupts.reported(name, serving_now=lambda: promotion.serving_version(spec, name)):
            result = promotion.rollback(spec, name, to_version=to_version, set_alias=set_alias)
    registry = (
        f" (registry {result.registered_model} version {result.registered_version})"
        if result.registered_model else ""
    )  # fmt: skip
    moved = f"; alias {result.alias_set!r} moved" if result.alias_set else ""
    if result.changed:
        click.echo(f"{name}: rolled back from version {result.previous_version} to {result.version}{registry}{moved}")
    else:
        click.echo(f"{name}: version {result.version} already serves{registry}{moved}")
    if result.changed and not set_alias and result.registered_model:
        click.echo(f"Note: if sync/watch follow an alias of {result.registered_model!r}, they will "
                   "roll forward unless you move it (--set-alias).", err=True)  # fmt: skip


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where logs, the sqlite store and artifacts go, kept after the stop "
                   "(default: a temporary folder, removed at the stop).")  # fmt: skip
@click.option("--replicas", type=click.IntRange(1, 8), default=1, show_default=True,
              help="tritonserver processes sharing the repository.")  # fmt: skip
@click.option("--example/--no-example", default=True, show_default=True,
              help="Register the example model `fraud` (versions 1 and 2, @production → 1).")  # fmt: skip
def dev(workdir: str | None, replicas: int, example: bool) -> None:
    """Run a local moto S3, MLflow server and tritonserver until Ctrl-C/SIGTERM.

    Prints the `export ...` lines that point `mlflow deployments -t triton` and `mlflow-triton`
    at it, and the MLflow UI URL. Stops only the processes it started.
    """
    from mlflow_triton.local.requirements import require_local_extra
    from mlflow_triton.local.stack import LocalStack

    require_local_extra()  # before anything is created or started: names the extra to install
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlflow-triton-dev-"))
    click.echo(f"Starting moto S3, mlflow server and {replicas} tritonserver(s) under {folder} ...", err=True)
    stack = LocalStack(folder, replicas=replicas)
    with _stop_on_signals("stopping the dev stack") as stop:
        try:
            stack.start()  # stops what it started if one server does not come up
        except (RuntimeError, TimeoutError) as err:  # the folder stays: its logs say why
            raise click.ClickException(f"the dev stack did not start: {err} (logs: {folder / 'logs'})") from err
        try:
            if stop.is_set():  # Ctrl-C while starting
                return
            if example:
                from mlflow_triton.local.example_model import (
                    EXAMPLE_ALIAS,
                    EXAMPLE_MODEL,
                    register_example,
                )

                with stack.exported_env():
                    versions = register_example()
                click.echo(f"Registered {EXAMPLE_MODEL} versions {', '.join(versions)} "
                           f"(@{EXAMPLE_ALIAS} -> {versions[0]})", err=True)  # fmt: skip
            click.echo("# Paste into another shell:")
            if sys.prefix != sys.base_prefix:  # a venv: its `mlflow` is not on the other shell's PATH
                click.echo(f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}")
            for key, value in stack.env.items():
                click.echo(f"export {key}={shlex.quote(value)}")
            click.echo(f"# MLflow UI: {stack.tracking_uri}")
            click.echo(f"# Logs: {folder / 'logs'}. Ctrl-C stops the stack.", nl=True)
            sys.stdout.flush()
            stop.wait()
        finally:
            stack.stop()
            if not workdir:  # a folder of ours: logs, sqlite store and artifacts go with the stack
                shutil.rmtree(folder, ignore_errors=True)
            click.echo("Stopped the dev stack.", err=True)

