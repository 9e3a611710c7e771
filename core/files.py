"""Every file robx writes: whole or not at all, never through a planted link, and checked
for writability before the work that produces it.

:func:`atomic_write` is the one writer: the content goes to a temporary file with a unique
name in the target's directory, is flushed and fsynced, then renamed over the target
(``os.replace``). A reader, a concurrent writer or a kill at any moment sees the old file or
the new one, never a part; a failure (a full disk, ``ulimit -f``, a read-only filesystem)
leaves the old file as it was and is one :class:`WriteError` line. Renaming replaces a
symbolic link planted at the target's name, not the file it points to.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from robx.core.errors import WriteError


def _default_mode() -> int:
    """The permission a plain ``open(path, "w")`` would give (0666 less the umask): mkstemp's
    0600 would hide files of a shared run directory from its other readers."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _default_mode()


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Replace ``path`` by what ``write(handle)`` writes to a binary file handle, atomically."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise WriteError(f"cannot write {path}: {error.strerror or error}; the file there is unchanged") \
                from error
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """fsync the directory so the rename itself survives a power cut (where the OS allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def check_writable(directory: Path, what: str) -> None:
    """One-line :class:`WriteError` unless files can be created in ``directory`` (or, when it
    does not exist yet, in its nearest existing parent, where it would be made): checked
    before the work whose results would go there. Creates and removes one empty file."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        if probe.is_symlink():
            raise WriteError(f"cannot write {what} in {directory}: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(f"cannot write {what} in {directory}: {probe} is not a directory")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".robx-write-check-", suffix=".tmp")
    except OSError as error:
        raise WriteError(f"cannot write {what} in {directory}: {error.strerror or error}") from error
    os.close(fd)
    os.unlink(name)


#: The key a data-level command's report.json carries, naming the command that wrote it:
#: ``--force`` replaces a directory's outputs only when they are robx's own.
WRITTEN_BY = "written_by"


def _written_by(report: Path, command: str) -> bool:
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(WRITTEN_BY) == command


def prepare_output_dir(out: Path, outputs: tuple[str, ...], command: str, force: bool) -> None:
    """Check ``--out`` of a data-level command before its work: a directory (or a path to make
    one), empty unless ``force``, and with ``force`` only robx's own outputs are replaced --
    ``outputs[0]`` is the report whose :data:`WRITTEN_BY` names ``command``, written last, so it
    vouches for the others. Files robx did not write stay; so does everything else there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WriteError(f"--out {out} is a file, not a directory; give a directory for {', '.join(outputs)}")
    present = [name for name in outputs if (out / name).exists() or (out / name).is_symlink()]
    if out.is_dir() and any(out.iterdir()) and not force:
        raise WriteError(f"output directory {out} already exists; pass --force to replace robx's outputs there")
    if present and not _written_by(out / outputs[0], command):
        raise WriteError(f"{out / present[0]} was not written by {command}; --force replaces only robx's own "
                         "outputs: move it away or choose another --out")
    check_writable(out, ", ".join(outputs))


def make_directory(out: Path) -> None:
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"cannot make directory {out}: {error.strerror or error}") from error
