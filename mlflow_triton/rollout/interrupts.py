"""Honest interrupts: what SIGINT and SIGTERM do to a rollout, and what the user is told.

A rollout has one point of no return, the switch (:meth:`~mlflow_triton.rollout.switch.Rollout.switch`:
the ``staged`` history record, the ``config.pbtxt`` write, the loads on every replica, the
``serving`` record). So:

* **before the switch** an interrupt stops the publish at once: the transaction removes the
  candidate and the staging model (:mod:`mlflow_triton.rollout.transaction`); nothing changed;
* **during the switch** the signals are deferred (:func:`critical`): the switch finishes, or
  rolls back as on a refusal, the history records it, and then the signal is delivered;
* **after it** (pruning) an interrupt stops the upkeep; the new version serves.

Each outcome becomes an :class:`Interrupted`, a ``KeyboardInterrupt`` whose message says which
version serves. At a command's edge, :func:`reported` prints that one line and exits with
``128 + signal number`` (130 for Ctrl-C, 143 for SIGTERM) under a click command (``mlflow
deployments``, ``mlflow-triton``), where click would otherwise print "Aborted!" and exit 1; from
plain Python it raises the :class:`Interrupted`::

    with interrupts.reported("fraud", serving_now=lambda: publisher.read_state("fraud").serving_version):
        publisher.publish("fraud", source)

Signal handlers run only in the main thread. Where rollouts run in worker threads (``sync``),
:func:`cooperative` turns the signals into a :class:`Cancellation` that the transaction checks
between its steps (:func:`checkpoint`): each rollout stops at its next safe point before the
switch, and a switch in progress finishes.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_local = threading.local()  # .depth: critical sections the thread is in


def _with_default_handlers() -> list[int]:
    """The signals whose handling is Python's default: a program's own handler, or an
    ignored signal (``cmd &`` in a script ignores SIGINT), is left alone."""
    defaults = (signal.default_int_handler, signal.SIG_DFL, None)
    return [sig for sig in SIGNALS if signal.getsignal(sig) in defaults]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@dataclass(frozen=True)
class Outcome:
    """What an interrupted command left serving.

    Attributes:
        deployment: the model name clients use.
        changed: whether this command changed the serving version (None: not known, e.g.
            the interrupt came while the command was returning).
        serving: the version serving now (None: the deployment does not exist).
        known: False when ``serving`` was not read.
        detail: one more clause (the candidate removed, pruning stopped...).
    """

    deployment: str
    changed: bool | None
    serving: int | None = None
    known: bool = True
    detail: str = ""

    def describe(self) -> str:
        """One line: what changed and which version serves."""
        name = repr(self.deployment)
        unchanged = "nothing changed; " if self.changed is False else ""
        if self.changed:
            text = f"{name} now serves version {self.serving}, recorded in its history"
        elif not self.known:
            text = f"nothing changed for {name}" if self.changed is False else (
                f"what {name} serves could not be read (`mlflow deployments get` shows it)"
            )  # fmt: skip
        elif self.serving is None:
            text = f"{unchanged}{name} is not deployed"
        else:
            text = f"{unchanged}{name} {'still ' if unchanged else ''}serves version {self.serving}"
        return f"{text} ({self.detail})" if self.detail else text


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT or SIGTERM; ``str()`` is the one-line outcome.

    A ``KeyboardInterrupt``, so code that handles Ctrl-C handles it, and an uncaught one ends
    the interpreter as Ctrl-C does.

    Attributes:
        signum: the signal (SIGINT for a plain ``KeyboardInterrupt``).
        outcome: what serves now; None until a layer that knows fills it in (:meth:`of`).
        message: instead of an outcome, an error that already says what serves.
    """

    def __init__(self, signum: int = signal.SIGINT, outcome: Outcome | None = None, message: str | None = None) -> None:
        super().__init__()
        self.signum = signum
        self.outcome = outcome
        self.message = message

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a command the signal ended."""
        return 128 + self.signum

    def __str__(self) -> str:
        text = self.message or (self.outcome.describe() if self.outcome else "stopped")
        return f"Interrupted by {_signal_name(self.signum)}: {text}"

    @classmethod
    def of(
        cls, err: BaseException, deployment: str, changed: bool | None, serving: int | None = None,
        known: bool = True, detail: str = "",
    ) -> "Interrupted":  # fmt: skip
        """``err`` itself when it already says what serves (a nested step knew better); else
        an :class:`Interrupted` with ``err``'s signal and this outcome."""
        if isinstance(err, Interrupted) and (err.message or err.outcome is not None):
            return err
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        return cls(signum, Outcome(deployment, changed, serving, known, detail))

    @classmethod
    def of_rollout(
        cls, err: BaseException, deployment: str, switched: int | None, before: int | None, known: bool,
        after: str = "",
    ) -> "Interrupted":  # fmt: skip
        """For a command that may have switched: ``switched`` (the version its rollout
        switched in and recorded, if any) now serves, else ``before`` still does."""
        if switched is not None:
            return cls.of(err, deployment, True, switched, detail=after)
        return cls.of(err, deployment, False, before, known=known)


class Cancellation(threading.Event):
    """A request, shared by the threads of one command, that rollouts stop at their next
    safe point before the switch (:func:`checkpoint`)."""

    signum: int = signal.SIGINT

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum
        self.set()


def checkpoint(cancel: Cancellation | None, before: str) -> None:
    """A safe point before the switch: raise :class:`Interrupted` if a stop was requested.

    Args:
        cancel: the command's cancellation (None: nothing to check).
        before: what would come next, for the log.

    Raises:
        Interrupted: without an outcome; the caller that knows what serves fills it in.
    """
    if cancel is not None and cancel.is_set() and not getattr(_local, "depth", 0):
        logger.info("Stopping before %s: %s was received", before, _signal_name(cancel.signum))
        raise Interrupted(cancel.signum)


@contextmanager
def critical(what: str) -> Iterator[None]:
    """Defer SIGINT and SIGTERM until the block ends (the switch: see the module docstring).

    In the main thread, a signal arriving in the block is held and delivered to the handler
    that was in place once the block has finished; if the block raised, its error goes on
    and the signal is left to :func:`reported` (which exits with the signal's status). In
    other threads, which never receive signals, it only turns :func:`checkpoint` off.
    Nested blocks defer to the outermost.

    Args:
        what: the work that must not be cut short, for the log.
    """
    depth = getattr(_local, "depth", 0)
    if depth or not _main_thread():
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth = depth
        return
    pending: list[int] = []

    def defer(signum: int, frame: Any) -> None:
        if not pending:
            logger.warning("%s received during %s: finishing it first", _signal_name(signum), what)
        pending.append(signum)

    previous: dict[int, Any] = {}
    failed = True
    try:
        for sig in SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:  # an ignored signal stays ignored
                previous[sig] = signal.signal(sig, defer)
        _local.depth = 1
        yield
        failed = False
    finally:
        _local.depth = 0
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if pending:
            _deliver(pending[0], previous.get(pending[0]), failed)


def _deliver(signum: int, handler: Any, failed: bool) -> None:
    """Hand a deferred signal to the handler that was in place (Python's own raises
    KeyboardInterrupt, :func:`reported`'s raises :class:`Interrupted`)."""
    if failed:  # an error is on its way out and says what serves; keep the exit status
        if _active is not None:
            _active.deferred = signum
        else:
            logger.warning("%s was received during an operation that failed; raising its error", _signal_name(signum))
        return
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action, now that the switch is recorded


@dataclass
class _Reported:
    """The :func:`reported` block the main thread is in."""

    deferred: int | None = None  # a signal deferred during a switch that then failed


_active: _Reported | None = None


@contextmanager
def reported(deployment: str | None, serving_now: Callable[[], int | None] | None = None) -> Iterator[None]:
    """A command's edge: SIGINT and SIGTERM stop the block (deferred during a switch), and an
    interrupt leaves it as one truthful line.

    In the main thread, both signals raise :class:`Interrupted` (SIGTERM would otherwise end
    the process at once, whatever it was doing), unless the program handles or ignores them
    itself. When the block is interrupted, the outcome line is printed to stderr and
    ``SystemExit(128 + signal)`` raised under a click command; elsewhere the
    :class:`Interrupted` is raised. An outcome that nobody filled in (the interrupt came
    before any rollout started) names the version ``serving_now()`` reads.

    Args:
        deployment: the deployment the command changes (None: the outcome is not about one).
        serving_now: reads the serving version of ``deployment`` (best effort).
    """
    if not _main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    global _active
    state, outer = _Reported(), _active
    previous = {}
    try:
        for sig in _with_default_handlers():
            previous[sig] = signal.signal(sig, interrupt)
        _active = state
        yield
    except KeyboardInterrupt as err:
        _exit(_completed(err, deployment, serving_now), err)
    except MlflowException as err:
        if state.deferred is None:
            raise
        _exit(Interrupted(state.deferred, message=err.message), err)
    finally:
        _active = outer
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _completed(
    err: KeyboardInterrupt, deployment: str | None, serving_now: Callable[[], int | None] | None
) -> Interrupted:
    """``err`` as an :class:`Interrupted` that says what serves (read now if nobody knew)."""
    if isinstance(err, Interrupted) and (err.message or err.outcome is not None and err.outcome.known):
        return err
    signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
    if deployment is None:
        return Interrupted(signum)
    changed = err.outcome.changed if isinstance(err, Interrupted) and err.outcome is not None else None
    serving, known = None, False
    if serving_now is not None:
        with critical("reading what serves"):
            try:
                serving, known = serving_now(), True
            except Exception as read_error:  # the outcome line still goes out
                logger.warning("Could not read the serving version of %s: %s", deployment, read_error)
    return Interrupted(signum, Outcome(deployment, changed, serving, known))


def _exit(interrupted: Interrupted, cause: BaseException) -> None:
    """Print the outcome and exit under a click command; else raise it."""
    import click

    if click.get_current_context(silent=True) is not None:
        click.echo(str(interrupted), err=True)
        raise SystemExit(interrupted.exit_code) from cause
    if interrupted is cause:
        raise interrupted
    raise interrupted from cause


@contextmanager
def cooperative() -> Iterator[Cancellation]:
    """SIGINT and SIGTERM request a :class:`Cancellation` instead of raising, for a command
    whose rollouts run in worker threads (``sync``): each stops at its next safe point before
    the switch, switches in progress finish, and the command reports per model. A second
    signal only says that it is still waiting. Outside the main thread it installs nothing.
    """
    cancel = Cancellation()
    if not _main_thread():
        yield cancel
        return

    def request(signum: int, frame: Any) -> None:
        if cancel.is_set():
            logger.warning("%s received again: still waiting for the switches in progress", _signal_name(signum))
            return
        logger.warning(
            "%s received: each rollout stops before its switch; switches in progress finish", _signal_name(signum)
        )
        cancel.request(signum)

    previous = {}
    try:
        for sig in _with_default_handlers():
            previous[sig] = signal.signal(sig, request)
        yield cancel
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
