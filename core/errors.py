"""The one error family users can cause. The CLI prints its message on one line and exits 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class RobxError(Exception):
    """A problem with the user's input or environment (not a bug in robx)."""

    #: the command line's exit status: 2 for bad input; 1 for a job that failed on its way
    exit_code = 2


class UnknownPluginError(RobxError):
    pass


class PluginConflictError(RobxError):
    pass


class PluginError(RobxError):
    """A plugin that does not fit robx's hooks (unknown hook name, wrong arguments)."""


class OptionError(RobxError):
    pass


class DataNotFoundError(RobxError):
    pass


class DataError(RobxError):
    """Data that is there but is not what the dataset says it is (a malformed file)."""


class CheckpointError(RobxError):
    pass


class RunDirError(RobxError):
    pass


class RunDirBusyError(RunDirError):
    """Another process holds the run directory (its lock): one writer at a time."""


class WriteError(RobxError):
    """A file could not be written (a read-only or full filesystem, a size limit); the file
    that was there is unchanged."""


class NonFiniteLossError(RobxError):
    pass


class PluginFailure(RobxError):
    """An installed (third-party) plugin's hook or command raised, or returned what its hook
    does not allow: the message names the package, the plugin, the hook and the exception; the
    original traceback is the ``__cause__`` (``ROBX_DEBUG=1`` prints it)."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a command (``robx.cli.main`` turns both into this).

    A ``BaseException``, as ``KeyboardInterrupt`` is, so that no ``except Exception`` on the
    way takes it for a failure of its own; every ``finally`` still runs (the run directory's
    lock is released, a new run without a checkpoint is removed). ``kept`` says what the
    command leaves behind and how to continue; the exit status is 128 + the signal's number
    (130 for SIGINT, 143 for SIGTERM), as a shell reports a process the signal ended."""

    def __init__(self, signal_number: int, kept: str | None = None) -> None:
        import signal

        self.signal_number = signal_number
        self.signal_name = signal.Signals(signal_number).name
        self.kept = kept
        super().__init__(f"interrupted by {self.signal_name}" + (f"; {kept}" if kept else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number

    def keeping(self, kept: str) -> Interrupted:
        """The same interruption, saying what the command left behind."""
        return Interrupted(self.signal_number, kept)


class TrainingPaused(Exception):
    """Training stopped cleanly before an epoch that would end after its deadline; the
    run directory's checkpoint continues it (``train(..., resume=True)``)."""

    def __init__(self, next_epoch: int) -> None:
        super().__init__(f"paused before epoch {next_epoch}; resume from the checkpoint")
        self.next_epoch = next_epoch


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message as one line, at most ``limit`` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def guarded(function: Callable[..., T], who: str, where: str) -> Callable[..., T]:
    """``function`` (an installed plugin's hook, command, loader or model builder) with every
    exception it raises turned into one :class:`PluginFailure` line naming ``who`` (the plugin
    and its package) and ``where`` (the hook), the original as its cause. robx's own one-line
    errors, Typer's exits and interruptions pass as they are."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except RobxError:
            raise
        except Exception as error:
            if type(error).__module__.split(".")[0] in ("click", "typer"):
                raise  # typer.Exit(code), Abort, usage errors: the command's own way out
            raise PluginFailure(f"{who} failed in {where}: {type(error).__name__}: {first_line(error)} "
                                "(ROBX_DEBUG=1 shows the traceback)") from error

    return call


def warn(message: str) -> None:
    """One ``robx: warning: ...`` line on stderr (from process 0 only under torchrun)."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(f"robx: warning: {message}", file=sys.stderr)
