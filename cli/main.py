"""``robx``: train, evaluate and inspect plugins (the commands live in ``train``, ``evaluate``
and ``listing``; this module adds the plugins' commands and runs the app).

User errors (``RobxError`` and bad command-line usage) print one line to stderr and
exit with status 2; nothing already on disk is lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, Optional

import typer

from robx.cli import evaluate, listing, train  # noqa: F401 -- each adds its commands to the app
from robx.cli.app import app
from robx.cli.options import add_attack_options
from robx.core.errors import Interrupted, RobxError
from robx.core.registry import registry


#: robx's own commands, the ones robx.cli's modules define (read before any plugin's is added)
OWN_COMMANDS: frozenset[str] = frozenset(info.name for info in app.registered_commands if info.name)


def add_registered_commands() -> None:
    """Add the commands plugins register (``register_commands``) to the app (once per
    process). A plugin that registers one of robx's own names is left out, with one warning."""
    from robx.core.discovery import warn_skipped

    found = registry()
    for spec in list(found.commands.values()):
        if spec.name in OWN_COMMANDS:
            message = f"command name '{spec.name}' from {spec.origin} is robx's own"
            if spec.origin in found.builtin:
                raise RobxError(message)
            found.skip(spec.origin, message)
            warn_skipped(message)
    present = {info.name for info in app.registered_commands}
    for spec in found.commands.values():
        if spec.name not in present:
            app.command(spec.name)(spec.function)


def _raise_interrupted(signal_number: int, frame: Any) -> None:
    """SIGINT / SIGTERM: unwind the command (its ``finally`` blocks release the lock and remove
    a new run without a checkpoint) as :class:`Interrupted`. A second signal ends the process
    at once, as the signal's default does."""
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    raise Interrupted(signal_number)


@contextlib.contextmanager
def interrupts_raised() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` for the block (the main thread only: Python
    delivers signals there), the previous handlers restored after it."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(getattr(signal, name), _raise_interrupted) for name in ("SIGINT", "SIGTERM")}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _say(line: str, error: BaseException | None = None) -> None:
    """One stderr line from process 0 (every process of a torchrun job meets the same input);
    ``ROBX_DEBUG=1`` puts the traceback of what caused it above."""
    from robx.core.distributed import PeerLostError

    if os.environ.get("RANK", "0") != "0" and not isinstance(error, PeerLostError):
        return
    if error is not None and os.environ.get("ROBX_DEBUG", "") not in ("", "0"):
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(line, file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: one line and exit status 2 for every user error, 128 + N for the
    signal N that interrupted a command (130: SIGINT, 143: SIGTERM), and the status a command
    exits with (``typer.Exit(code)``) for the rest."""
    try:
        with interrupts_raised():
            add_registered_commands()
            add_attack_options()
            command = typer.main.get_command(app)
            code = command.main(args=argv, prog_name="robx", standalone_mode=False)
    except Interrupted as interruption:
        _say(f"robx: {interruption if interruption.kept else f'{interruption}; nothing was written'}")
        sys.exit(interruption.exit_code)
    except RobxError as error:
        _say(f"robx: error: {error}", error)
        sys.exit(error.exit_code)
    except Exception as error:
        # Typer's usage errors (click's, vendored as typer._click in new releases) carry format_message()
        if type(error).__name__ == "Abort":
            print("robx: aborted", file=sys.stderr)
            sys.exit(130)
        if hasattr(error, "format_message"):
            print(f"robx: error: {error.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise
    # a command's typer.Exit(code) comes back as its return value outside standalone mode
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
