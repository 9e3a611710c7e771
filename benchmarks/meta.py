"""Provenance every benchmark result carries: command, git commit, machine, time."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):  # a copy without .git (the device machine)
        return os.environ.get("ROBX_COMMIT", "unknown")


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def write_result(path: Path, payload: dict[str, Any]) -> Path:
    """Write a result with its provenance; ``commit`` is the checkout when the process
    started (what the benchmark ran), not when the result is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join([Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else sys.argv[0]] + sys.argv[1:]),
        "commit": STARTED_AT_COMMIT,
        "machine": machine(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **payload,
    }
    # a unique temporary file beside it, then a rename: a killed sweep never leaves half a result
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, path)
    return path


STARTED_AT_COMMIT = git_commit()
