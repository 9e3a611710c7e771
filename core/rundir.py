"""Run directories: one writer at a time (an exclusive lock), atomic files, no links followed,
and checkpoints that hold tensors and plain data only."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from robx.core.errors import CheckpointError, RunDirBusyError, RunDirError
from robx.core.files import atomic_write

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
REPORT_FILE = "report.json"
PLOT_FILE = "per_class.png"
#: the best checkpoint and its report (``--keep-best``)
BEST_FILE = "best.pt"
BEST_REPORT_FILE = "report-best.json"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, REPORT_FILE, PLOT_FILE, BEST_FILE, BEST_REPORT_FILE,
             "metrics.csv")
#: held (``flock``) by the one process writing the run directory; it names that process
LOCK_FILE = ".robx.lock"


def is_robx_output(name: str) -> bool:
    """A file robx writes into a run directory: the run's files, ``robx eval``'s reports and
    the temporary files of an interrupted atomic write."""
    return (name in RUN_FILES or (name.startswith("eval-") and name.endswith(".json"))
            or (name.startswith(".") and name.endswith(".tmp")))


def check_no_links(path: Path) -> None:
    """Refuse a run directory whose robx files are symbolic links: a received run directory
    must not make robx write (or truncate) a file elsewhere."""
    if not path.is_dir():
        return
    for child in sorted(path.iterdir()):
        if (is_robx_output(child.name) or child.name == LOCK_FILE) and child.is_symlink():
            raise RunDirError(f"{child} is a symbolic link (to {os.readlink(child)}); robx does not write through "
                              "links in a run directory: remove it")


def check_new_run_dir(path: Path, force: bool) -> None:
    """Raise unless ``path`` can become a fresh run directory: it does not exist or is empty,
    or, with ``force``, it holds a robx run (never arbitrary files)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if path.exists() and any(child.name != LOCK_FILE for child in path.iterdir()):
        if not force:
            raise RunDirError(f"run directory {path} already exists; pass --force to overwrite it")
        if not (path / CONFIG_FILE).exists():
            raise RunDirError(f"refusing to overwrite {path}: it is not a robx run directory")
    check_no_links(path)


def prepare_run_dir(path: Path, force: bool) -> None:
    """Make ``path`` a fresh run directory (:func:`check_new_run_dir`); with ``force`` the
    old run's files are removed first (only robx's own: other files stay)."""
    check_new_run_dir(path, force)
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if is_robx_output(child.name) and child.is_file():
            child.unlink()


class RunDirLock:
    """``with RunDirLock(run_dir, "train"):`` the exclusive right to write ``run_dir``.

    An ``flock`` on :data:`LOCK_FILE` inside it, taken without waiting: a second robx process
    (train, resume, eval, ``--force``) gets one :class:`RunDirBusyError` naming the holder.
    The kernel releases the lock when the holder exits, however it ends, so a killed run
    leaves no stale lock. The directory is created when it does not exist.
    """

    def __init__(self, run_dir: Path, command: str) -> None:
        self.run_dir = Path(run_dir)
        self.command = command
        self.fd: int | None = None

    def __enter__(self) -> RunDirLock:
        path = self.run_dir / LOCK_FILE
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(f"cannot create run directory {self.run_dir}: {error.strerror or error}") from error
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as error:
                if path.is_symlink():
                    raise RunDirError(f"{path} is a symbolic link; robx does not write through links in a run "
                                      "directory: remove it") from error
                raise RunDirError(f"cannot lock run directory {self.run_dir}: {error.strerror or error}") from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = ""
                for _ in range(20):  # the holder writes its name just after it takes the lock
                    holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
                    if holder:
                        break
                    time.sleep(0.05)
                holder = holder or "another process"
                os.close(fd)
                raise RunDirBusyError(f"run directory {self.run_dir} is in use by {holder}; wait for it to end "
                                      "or choose another directory") from None
            try:  # the file we locked may have been replaced while we waited: lock the one there now
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = (f"process {os.getpid()} on {socket.gethostname()} (robx {self.command}, since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self.fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty lock file: nobody holds it (a killed holder's name stays, unlocked)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def is_held(run_dir: Path) -> bool:
    """Whether a process holds ``run_dir``'s lock now (a killed or interrupted holder does not)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def discard_new_run(path: Path, created: bool) -> None:
    """Remove what a new run wrote before it failed (it has no checkpoint to resume from): its
    files, the lock file when nothing else is left, and then the directory when the run
    created it."""
    for child in path.iterdir() if path.is_dir() else ():
        if is_robx_output(child.name) and child.is_file():
            child.unlink(missing_ok=True)
    if path.is_dir() and all(child.name == LOCK_FILE for child in path.iterdir()):
        (path / LOCK_FILE).unlink(missing_ok=True)
        if created:
            path.rmdir()


def check_state_fits(expected: dict[str, torch.Tensor], saved: Any, source: Path, model: str) -> None:
    """One :class:`CheckpointError` line naming the first difference when the weights saved in
    ``source`` are not those of ``model`` (another architecture, a changed shape)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {source} holds no model weights")
    missing = [key for key in expected if key not in saved]
    extra = [key for key in saved if key not in expected]
    shapes = [key for key in expected if key in saved and
              (not isinstance(saved[key], torch.Tensor) or saved[key].shape != expected[key].shape)]
    differences = len(missing) + len(extra) + len(shapes)
    if not differences:
        return
    more = f" ({differences - 1} more differences)" if differences > 1 else ""
    if shapes:
        key = shapes[0]
        found = tuple(saved[key].shape) if isinstance(saved[key], torch.Tensor) else type(saved[key]).__name__
        first = f"'{key}' has shape {found} in the checkpoint, {tuple(expected[key].shape)} in the model"
    elif missing:
        first = f"the checkpoint lacks '{missing[0]}'"
    else:
        first = f"the checkpoint has '{extra[0]}', which the model lacks"
    raise CheckpointError(f"checkpoint {source} does not fit {model} of the run's config: {first}{more}")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Serialise, then write atomically (:func:`robx.core.files.atomic_write`)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


class RefusedFile(Exception):
    """A torch file whose pickle names objects other than tensors and plain data (the message
    is torch's line that says which)."""


def load_plain(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``: torch's unpickler refuses every class outside
    tensors and plain containers, so a crafted file cannot run code. A refused file raises
    :class:`RefusedFile`; anything else torch raises (a corrupt file) passes through."""
    try:
        with warnings.catch_warnings():  # torch warns before it refuses a legacy pickle: the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if refused is not None:
            raise RefusedFile(refused) from None
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint holding only tensors and plain data.

    ``weights_only=True`` makes torch's unpickler refuse every class outside tensors and
    plain containers, so a crafted file in a shared run directory cannot run code.
    """
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = load_plain(path)
    except RefusedFile as error:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain data; "
                              f"refused to load it ({error})") from error
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__})") from error
    if not isinstance(payload, dict) or "model" not in payload or "epoch" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a robx checkpoint")
    return payload


def finished_epoch(run_dir: Path) -> int | None:
    """The last epoch whose checkpoint ``run_dir`` holds (``None``: no readable checkpoint)."""
    try:
        return int(load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None
