"""Data-parallel training and evaluation across processes (torch.distributed under torchrun).

A run under ``torchrun --nproc_per_node W -m robx train ...`` is the same run as one process,
cut across W processes (docs/distributed.md):

* **Batches.** ``--batch-size`` is the global batch B. Every process draws the same global
  batches (the run's seeded generator, shuffled or drawn by a plugin's sampling weights), and
  process r trains on the r-th of W nearly equal slices (:func:`rank_shards`); a final batch
  too short to give every process an example joins the one before it, so every example of
  the epoch is trained on exactly once, as in one process. DDP averages the processes'
  gradients; each process's loss is weighted by its slice's share of the global batch, so
  unequal slices count by their size.
* **Random draws** (attack starts, crop/flip, mixing partners) come from each process's own
  stream, seeded from (seed, epoch, rank) at every epoch (:func:`seed_rank_streams`), so a
  run is reproducible and resumable with the same number of processes.
* **Statistics** are summed across processes as counts and sums (:func:`sum_across`), never
  averaged accuracies, before any plugin reads them at epoch end, so every process takes the
  same per-class decisions.
* **BatchNorm.** The attack runs the unwrapped model in eval mode, and the training passes
  normalise each process's slice with its own batch statistics (DDP's
  ``broadcast_buffers`` is off); at epoch end the running statistics are averaged across
  processes (``dist_bn = "reduce"``, the default) or taken from process 0
  (``"broadcast"``), so every process evaluates and checkpoints the same model. With
  ``sync_bn`` (CUDA only: torch's SyncBatchNorm) the training passes normalise with the
  statistics of the whole global batch instead.
* **Evaluation** is cut by evaluation batch: batch k runs on process k mod W with a random
  stream seeded from (seed, k), and the per-example scores are gathered in order, so the
  report is the single-process report, whatever W.
* **Files.** Process 0 alone writes the run directory (atomically, as in one process).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from robx.core.config import BatchNormSync
from robx.core.errors import OptionError, RobxError

T = TypeVar("T")

#: How long a collective waits for a peer before the job ends with an error (a peer that
#: died mid-epoch is usually noticed at once; this bounds a hang)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class PeerLostError(RobxError):
    """A process of a distributed run stopped (killed, out of memory, its node gone)."""

    exit_code = 1


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: rank r of W (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Processes()


def current() -> Processes:
    """The job this process belongs to (:data:`SINGLE` when no process group is set up)."""
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def launched_world_size() -> int:
    """W of the job torchrun launched this process into (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as error:
        raise OptionError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from error


def uses_cuda(device_name: str) -> bool:
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


def start(device_name: str) -> Processes:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...): NCCL when the run uses CUDA (process r on GPU LOCAL_RANK), gloo on CPU.
    Outside torchrun, or with one process, nothing is set up."""
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise RobxError("this torch build has no torch.distributed; run with one process")
    cuda = uses_cuda(device_name)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return current()


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def joined(device_name: str) -> Iterator[Processes]:
    """The job for the duration of a command (:func:`start` ... :func:`stop`). On a clean exit
    every process waits for the others before the group is torn down: gloo aborts a process
    whose peer destroys the group while the last messages are still in flight. After an
    error there is no wait (a peer may be gone, and the error is what the user must see)."""
    processes = start(device_name)
    try:
        yield processes
        if processes.distributed:
            with peers_checked(processes, "the end of the command"):
                dist.barrier()
    finally:
        stop()


@contextmanager
def peers_checked(processes: Processes, what: str) -> Iterator[None]:
    """Turn a collective that failed because another process is gone into one clear error."""
    try:
        yield
    except RuntimeError as error:  # gloo and NCCL report a lost peer as RuntimeError subclasses
        if not processes.distributed or isinstance(error, RobxError):
            raise
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise PeerLostError(f"process {processes.rank} of {processes.world_size} lost the others during {what} "
                            f"({first[:160]})") from error


# ---------------------------------------------------------------------------
# batches and random streams
# ---------------------------------------------------------------------------


def rank_shards(batches: Sequence[torch.Tensor], processes: Processes,
                smallest: int = 1) -> list[tuple[torch.Tensor, float]]:
    """This process's slice of every global batch, and the slice's weight W * len(slice) /
    len(batch) (1.0 for equal slices), so that DDP's mean of the processes' gradients is the
    gradient of the global batch's mean loss. ``smallest`` is the fewest examples a slice may
    hold (2 for a model with BatchNorm, whose training statistics need two): a last batch
    too short to give every process that many joins the batch before it."""
    world = processes.world_size
    batches = list(batches)
    if len(batches) > 1 and len(batches[-1]) < world * smallest:
        batches[-2:] = [torch.cat(batches[-2:])]
    if not batches or len(batches[-1]) < world * smallest:
        total = sum(len(batch) for batch in batches)
        raise OptionError(f"{total} training example(s) cannot be shared by {world} process(es), {smallest} each"
                          + (" (BatchNorm needs two)" if smallest > 1 else ""))
    if min(len(batch) for batch in batches) < world * smallest:
        raise OptionError(f"a batch of {min(len(batch) for batch in batches)} leaves some of the {world} processes "
                          f"fewer than {smallest} example(s); use a batch size of at least {world * smallest}")
    if world == 1:
        return [(batch, 1.0) for batch in batches]
    shards = []
    for batch in batches:
        part = batch.tensor_split(world)[processes.rank]
        shards.append((part, world * len(part) / len(batch)))
    return shards


def rank_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_rank_streams(seed: int, epoch: int, processes: Processes) -> None:
    """Seed python's, numpy's and torch's global streams of this process for an epoch."""
    import random

    value = rank_seed(seed, epoch, processes.rank, processes.world_size)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def owned_batches(count: int, processes: Processes) -> range:
    """Evaluation batches 0..count-1 this process runs: k with k mod W == rank."""
    return range(processes.rank, count, processes.world_size)


# ---------------------------------------------------------------------------
# collectives
# ---------------------------------------------------------------------------


def sum_across(tensors: Sequence[torch.Tensor], processes: Processes) -> None:
    """Sum every tensor over the processes, in place (counts and sums, never means)."""
    if not processes.distributed:
        return
    with peers_checked(processes, "the sum of statistics"):
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def average_gradients(parameters: Iterable[torch.nn.Parameter], weight: float,
                      processes: Processes | None = None) -> None:
    """For a module a plugin trains itself beside the model (MinGRE's encoder): average its
    gradients over the processes, each weighted by ``weight`` (its share of the global batch,
    e.g. its slice's size), in place, before the plugin's optimiser step. With the loss a
    mean over the slice this is the gradient one process would get from the whole batch, and
    every process then takes the same step, so the module stays identical everywhere (the
    engine's epoch-end agreement check compares the plugins' saved state). One process: nothing."""
    processes = current() if processes is None else processes
    if not processes.distributed:
        return
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.flatten() for grad in grads] + [grads[0].new_ones(1)]) * weight
    with peers_checked(processes, "a plugin's gradient average"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    total, offset = flat[-1], 0
    for grad in grads:
        grad.copy_((flat[offset:offset + grad.numel()] / total).view_as(grad))
        offset += grad.numel()


def global_rows(rows: torch.Tensor, processes: Processes | None = None) -> tuple[torch.Tensor, slice]:
    """The global batch's rows from every process's slice of it (by rank: :func:`rank_shards`'
    order), and this process's slice of them; for a plugin that carries rows of the batch
    across steps (Free AT's perturbation), so that every process holds the same whole.
    One process: ``rows`` itself. To learn only where its slice lies, pass the labels ``step.y``."""
    processes = current() if processes is None else processes
    if not processes.distributed:
        return rows, slice(0, len(rows))
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(processes.world_size)]
    with peers_checked(processes, "a gather of batch rows"):
        dist.all_gather(counts, torch.tensor([len(rows)], device=rows.device))
        sizes = [int(count) for count in counts]
        padded = torch.cat([rows, rows.new_zeros(max(sizes) - len(rows), *rows.shape[1:])])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    start = sum(sizes[:processes.rank])
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), slice(start, start + len(rows))


def gather_objects(value: T, processes: Processes) -> list[T]:
    """Every process's ``value`` (picklable, produced by robx in this job), by rank."""
    if not processes.distributed:
        return [value]
    gathered: list[Any] = [None] * processes.world_size
    with peers_checked(processes, "a gather"):
        dist.all_gather_object(gathered, value)
    return gathered


def from_main(value: T, processes: Processes) -> T:
    """Process 0's ``value`` on every process (a run directory, a decision)."""
    if not processes.distributed:
        return value
    holder = [value]
    with peers_checked(processes, "a broadcast"):
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(processes: Processes) -> None:
    if processes.distributed:
        with peers_checked(processes, "a barrier"):
            dist.barrier()


def on_main(action: Callable[[], T], processes: Processes, what: str) -> T | None:
    """Run ``action`` on process 0 and make every process fail with its error if it fails
    (a run directory that exists, a disk that is full), instead of waiting for it forever."""
    result, failure = None, None
    if processes.main:
        try:
            result = action()
        except RobxError as error:
            failure = error
    message = from_main(None if failure is None else str(failure), processes)
    if failure is not None:
        raise failure
    if message is not None:
        raise RobxError(message)
    barrier(processes)
    return result


def digest(value: Any) -> str:
    """A hash of plain data (tensors, numbers, strings, lists and dicts of them), bit-exact."""
    hasher = hashlib.sha256()

    def add(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            flat = item.detach().cpu().contiguous().flatten()
            hasher.update(f"{flat.dtype}{tuple(item.shape)}".encode())
            hasher.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                hasher.update(repr(key).encode())
                add(item[key])
        elif isinstance(item, (list, tuple)):
            hasher.update(f"[{len(item)}".encode())
            for part in item:
                add(part)
        else:
            hasher.update(repr(item).encode())

    add(value)
    return hasher.hexdigest()


def check_agreement(values: dict[str, Any], processes: Processes, when: str) -> None:
    """Raise if the processes hold different ``values`` (the model, the per-class
    quantities, the plugins' saved state): every process must take the same decisions from the
    same combined statistics, and the checkpoint keeps process 0's."""
    if not processes.distributed:
        return
    mine = {name: digest(value) for name, value in values.items()}
    differing = sorted({name for theirs in gather_objects(mine, processes) for name in mine
                        if theirs.get(name) != mine[name]})
    if differing:
        raise RobxError(f"the {processes.world_size} processes disagree on {', '.join(differing)} after {when}; "
                        "a plugin decides from this process's batches alone (see robx.core.distributed)")


def sync_batchnorm_statistics(model: nn.Module, policy: BatchNormSync, processes: Processes) -> None:
    """Make every process's BatchNorm running statistics the same: their mean
    (``"reduce"``) or process 0's (``"broadcast"``)."""
    if not processes.distributed:
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    buffers = [b for m in norms for b in (m.running_mean, m.running_var) if b is not None]
    with peers_checked(processes, "the BatchNorm statistics' sync"):
        for buffer in buffers:
            if policy == "reduce":
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(processes.world_size)
            else:
                dist.broadcast(buffer, src=0)


def check_sync_bn(device: torch.device) -> None:
    if device.type != "cuda":
        raise OptionError("sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); on CPU the "
                          "processes' BatchNorm statistics are averaged at epoch end (dist_bn = 'reduce')")


class BatchPasses(nn.Module):
    """Several input batches through one model in one call, so that DDP sees one forward per
    step (the clean and the adversarial BatchNorm batches of a step are one DDP forward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *batches: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.model(batch) for batch in batches]


def data_parallel(model: nn.Module, device: torch.device, processes: Processes) -> nn.Module:
    """The module the training passes run through: :class:`BatchPasses` of the model, under
    DDP across processes (gradients averaged in backward; buffers left to the BN policy)."""
    passes = BatchPasses(model)
    if not processes.distributed:
        return passes
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # buffers are not synced on every forward: the BN policy syncs them at epoch end (torch
    # 2.14 renamed the switch; the older name is what torch 2.1-2.13 know)
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False}
    with peers_checked(processes, "DDP's start (it broadcasts process 0's weights)"):
        return DistributedDataParallel(passes, device_ids=device_ids, **no_sync)
