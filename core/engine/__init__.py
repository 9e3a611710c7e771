"""The engine: one way through the data for every method (docs/engine.md).

    batch -> select_victims -> generate_adversary -> augment -> forward
          -> loss = mean(w * per_sample_loss) + sum(extra_loss) -> backward -> step
          -> class statistics (on device; read at epoch end)

The engine is task-agnostic: the run's registered task (``robx.core.task``) supplies the
inputs, the augmentation, the losses, the scores and the statistics; the dataset and the
model come from the registry. Nothing here depends on which task it is.

Its parts, each a module: :mod:`.build` (a run from its config), :mod:`.step` (one training
step), :mod:`.loop` (epochs, validation, pause and resume: :func:`train`),
:mod:`.checkpoints` (the run directory) and :mod:`.evaluation` (the evaluated model and its
report). This package exports the names the CLI, the plugins and the tests use.
"""

from robx.core.engine.build import (CHANNELS_LAST_BY_DEVICE, DEVICE_DATA_SHARE, Progress, Run, SilentProgress,
                                    build_model, build_optimizer, build_run, build_scheduler, keeps_data_on_device,
                                    placed_model, refresh_class_quantities, step_precision)
from robx.core.engine.checkpoints import load_run, run_dir_held, saved_config
from robx.core.engine.evaluation import averaged_eval_model, eval_attack, evaluate_run, plot_title
from robx.core.engine.evaluation import split_stats
from robx.core.engine.loop import train, train_epoch, validation_attack
from robx.core.engine.step import (bound_attack, epoch_batches, forward_passes, on_batch_source, planned_attack,
                                   prepared_step, statistics_views, train_step, training_batch)

__all__ = ["CHANNELS_LAST_BY_DEVICE", "DEVICE_DATA_SHARE", "Progress", "Run", "SilentProgress", "averaged_eval_model",
           "bound_attack", "build_model", "build_optimizer", "build_run", "build_scheduler", "epoch_batches",
           "eval_attack", "evaluate_run", "forward_passes", "keeps_data_on_device", "load_run", "on_batch_source",
           "placed_model", "planned_attack", "plot_title", "prepared_step", "refresh_class_quantities",
           "run_dir_held", "saved_config", "split_stats", "statistics_views", "step_precision",
           "train", "train_epoch", "train_step", "training_batch", "validation_attack"]
