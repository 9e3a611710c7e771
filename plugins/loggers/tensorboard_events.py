"""``tensorboard``: TensorBoard event files under ``<run>/tensorboard`` (``--log tensorboard``;
the ``tensorboard`` extra: ``pip install 'robx[tensorboard]'``), read with ``tensorboard
--logdir runs``.

Each epoch's :func:`robx.core.logging.epoch_scalars` as scalars at step = epoch, through
``torch.utils.tensorboard``'s ``SummaryWriter``. A resumed run purges the steps from its
first epoch on (``purge_step``), so the epochs it trains again are not drawn twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robx import RegisterLogger, TrainConfig, epoch_scalars, hookimpl

#: the plugin's name (its module's, "tensorboard_events", is long)
name = "tensorboard-logger"


class TensorBoardLogger:
    def __init__(self, run_dir: Path, first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=first_epoch or None)

    def log_epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        for key, value in epoch_scalars(record).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make(run_dir: Path, config: TrainConfig, first_epoch: int) -> TensorBoardLogger:
    return TensorBoardLogger(run_dir, first_epoch)


@hookimpl
def register_loggers(register: RegisterLogger) -> None:
    register("tensorboard", make, needs=("tensorboard", "pip install 'robx[tensorboard]'"))
