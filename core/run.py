"""Run directories and atomic checkpoints."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from robx.core.errors import CheckpointError, RunDirError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
REPORT_FILE = "report.json"
PLOT_FILE = "per_class.png"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, REPORT_FILE, PLOT_FILE)


def check_new_run_dir(path: Path, force: bool) -> None:
    """Raise unless ``path`` can become a fresh run directory: it does not exist or is empty,
    or, with ``force``, it holds a robx run (never arbitrary files)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()):
        if not force:
            raise RunDirError(f"run directory {path} already exists; pass --force to overwrite it")
        if not (path / CONFIG_FILE).exists():
            raise RunDirError(f"refusing to overwrite {path}: it is not a robx run directory")


def prepare_run_dir(path: Path, force: bool) -> None:
    """Create a fresh run directory (:func:`check_new_run_dir`); with ``force`` an old
    run's files are removed first."""
    check_new_run_dir(path, force)
    if path.exists() and any(path.iterdir()):
        for child in path.iterdir():
            if child.is_file() and (child.name in RUN_FILES or child.suffix in (".png", ".json", ".jsonl", ".tmp")):
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint holding only tensors and plain data.

    ``weights_only=True`` makes torch's unpickler refuse every class outside tensors and
    plain containers, so a crafted file in a shared run directory cannot run code.
    """
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if refused is not None:
            raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain data; "
                                  f"refused to load it ({refused})") from error
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
