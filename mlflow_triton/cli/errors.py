"""How ``mlflow-triton`` reports a failed command: one line and a hint; ``--debug`` adds the traceback.

The commands turn the errors they expect (``MlflowException``) into ``click.ClickException``;
anything else would reach Python's default handler, a traceback with the useful sentence
last. :class:`ErrorReportingGroup` is the group class of the ``mlflow-triton`` command: it
adds the ``--debug`` option and prints every failure as ``Error: <message>`` followed by
``Hint: ...``, exit status 1. With ``--debug`` the traceback of the original exception comes
first. Usage errors (exit status 2), ``Aborted!`` and explicit exits are click's, unchanged.
Whatever it prints has credentials in URLs masked (:mod:`mlflow_triton.core.masking`): every
exception leaving a command is scrubbed in place, its type and traceback kept.
"""

from __future__ import annotations

import traceback
from typing import Any

import click
from mlflow.exceptions import MlflowException

from mlflow_triton.core.masking import mask_secrets, scrub_exception

__all__ = ["CommandFailed", "ErrorReportingGroup"]

_DEBUG = "mlflow_triton.debug"
HINT = "Hint: mlflow-triton --debug {command} ... shows the traceback."


class CommandFailed(click.ClickException):
    """``Error: <message>`` then the hint that ``--debug`` shows the traceback."""

    def __init__(self, message: str, command: str, hint: bool = True) -> None:
        super().__init__(message)
        self.command = command
        self.hint = hint

    def show(self, file: Any = None) -> None:
        super().show(file)
        if self.hint:
            click.echo(HINT.format(command=self.command), err=True)


def describe(err: BaseException) -> str:
    """The message of ``err`` for one line: the text of errors the user can act on
    (MlflowException, a missing package), else prefixed by the exception type."""
    if isinstance(err, MlflowException):
        return err.message
    if isinstance(err, ImportError) or isinstance(err, click.ClickException):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _remember_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    ctx.meta[_DEBUG] = value


class ErrorReportingGroup(click.Group):
    """A click group whose commands fail with one line and a hint (``--debug``: traceback)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_remember_debug,
            help="On an error, print the traceback too.",
        ))  # fmt: skip

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except (click.UsageError, CommandFailed) as err:
            err.message = mask_secrets(err.message)
            raise
        except Exception as err:
            scrub_exception(err)  # in place, chained causes too: type and traceback kept
            cause = err.__cause__ if isinstance(err, click.ClickException) and err.__cause__ else err
            debug = bool(ctx.meta.get(_DEBUG))
            if debug:
                traceback.print_exception(cause)
            elif isinstance(err, click.ClickException) and cause is err:
                raise  # click's own error (a bad --spec path...): nothing more to show
            raise CommandFailed(describe(err), ctx.invoked_subcommand or "", hint=not debug) from cause
