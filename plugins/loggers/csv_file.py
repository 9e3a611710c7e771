"""``csv``: metrics.csv beside metrics.jsonl, one row per epoch, for a spreadsheet or pandas.

The columns are :func:`robx.core.logging.epoch_scalars`' names (epoch, loss, lr, seconds,
the loss terms, the train and validation scores' mean, worst class and each class); every
epoch rewrites the file whole from the run's records (atomically), so a resumed run's file
holds its earlier epochs too and never a half row. On by default (``--log csv``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from robx import RegisterLogger, TrainConfig, atomic_write, epoch_scalars, hookimpl

#: the plugin's name (its module's, "csv_file", would not say it is a logger)
name = "csv-logger"


class CSVLogger:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.csv"

    def log_epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        rows = [epoch_scalars(entry) for entry in history]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, lambda handle: handle.write(buffer.getvalue().encode()))

    def close(self) -> None:
        pass


def make(run_dir: Path, config: TrainConfig, first_epoch: int) -> CSVLogger:
    return CSVLogger(run_dir)


@hookimpl
def register_loggers(register: RegisterLogger) -> None:
    register("csv", make)
