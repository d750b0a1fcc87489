"""Process-group set-up: torchrun environment, else SLURM environment, else a single process."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from util.abort import start_watching, stop_watching
from util.errors import UserError, code_location

logger = logging.getLogger("deepcluster")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _check_complete(names: tuple[str, ...], source: str) -> None:
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise UserError(
            f"partial {source} environment: {', '.join(missing)} not set; set all of {', '.join(names)} or none"
        )


def first_slurm_host(nodelist: str) -> str:
    """The first host of SLURM_JOB_NODELIST (scontrol expands ranges such as node[01-04])."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        head = nodelist.split(",")[0]
        if "[" in head:  # node[01-04,07] -> node01
            prefix, rest = head.split("[", 1)
            return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        return head


def env_info() -> tuple[DistInfo, str | None, str | None]:
    """Read rank/world/local rank and the rendezvous address from the environment."""
    if any(n in os.environ for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        _check_complete(TORCHRUN_VARS, "torchrun")
        info = DistInfo(
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ["LOCAL_RANK"]),
        )
        return info, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        _check_complete(SLURM_VARS, "SLURM")
        info = DistInfo(
            int(os.environ["SLURM_PROCID"]),
            int(os.environ["SLURM_NTASKS"]),
            int(os.environ["SLURM_LOCALID"]),
        )
        addr = os.environ.get("MASTER_ADDR") or first_slurm_host(os.environ["SLURM_JOB_NODELIST"])
        # A port derived from the job id: two jobs sharing a node do not collide.
        port = os.environ.get("MASTER_PORT") or str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)
        return info, addr, port
    return DistInfo(), None, None


DEFAULT_TIMEOUT_MIN = 10.0  # a collective waiting longer than this ends the run (--dist-timeout)
_TIMEOUT_MIN = DEFAULT_TIMEOUT_MIN


def init_distributed(device: str, timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Initialise torch.distributed when the environment asks for several processes (NCCL on GPU, else gloo), with
    collectives that give up after timeout_min, and start watching for another rank's failure (util/abort.py)."""
    info, addr, port = env_info()
    if not info.distributed:
        return info
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, port
    use_cuda = device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method=f"tcp://{addr}:{port}",
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(minutes=timeout_min),
    )
    global _STARTED, _TIMEOUT_MIN
    _STARTED, _TIMEOUT_MIN = info, timeout_min
    start_watching(addr, int(port), info.rank, info.world_size)
    logger.info(
        "distributed: rank %d / %d (local %d) via %s:%s",
        info.rank,
        info.world_size,
        info.local_rank,
        addr,
        port,
    )
    return info


_STARTED: DistInfo | None = None  # what init_distributed found (its local rank is SLURM's or torchrun's)


def current() -> DistInfo:
    """This process's place in the initialised process group (rank 0 of 1 when there is none): the one way the
    code asks "am I rank 0" or "how many processes"."""
    if dist.is_available() and dist.is_initialized():
        if _STARTED is not None and _STARTED.world_size == dist.get_world_size():
            return _STARTED
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


@contextmanager
def named(what: str) -> Iterator[None]:
    """A collective that times out is one line naming it, this rank, and the likely causes."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).lower()
        if "timed out" in text or "timeout" in text:
            raise UserError(
                f"rank {current().rank}: {what} ({_caller()}) timed out after {_TIMEOUT_MIN:g} min waiting for the "
                "other ranks: one "
                "stopped (its log says why) or is still busy (rank 0 clustering a large set on the CPU): raise "
                "--dist-timeout, or give rank 0 a GPU for k-means"
            ) from err
        raise


def _caller() -> str:
    """Where the collective was called from: the innermost frame of this repository outside this module."""
    import traceback

    return code_location(traceback.extract_stack(), skip=os.path.realpath(__file__)) or "unknown"


def barrier(what: str = "a barrier") -> None:
    if current().distributed:
        with named(what):
            dist.barrier()


def cleanup() -> None:
    """The normal end of a distributed run: every rank done with its collectives, then the failure watchers stopped
    (rank 0, whose store they read, last), then the process group."""
    if dist.is_available() and dist.is_initialized():
        barrier("the end-of-run barrier")
        stop_watching()
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable object from src to every rank (identity when not distributed)."""
    if not current().distributed:
        return obj
    holder = [obj]
    with named(f"a broadcast from rank {src}"):
        dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate (n_r, ...) tensors of every rank (n_r may differ) in rank order."""
    if not current().distributed:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    with named("an all_gather of row counts"):
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    max_rows = int(max(s.item() for s in sizes))
    padded = torch.zeros((max_rows, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    with named("an all_gather of rows"):
        dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes, strict=True)])


def all_gather_equal_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate (n, ...) tensors of every rank, n the same on all of them, in rank order; no size exchange, so
    nothing is read back on the host (all_gather_rows reads the sizes)."""
    if not current().distributed:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    with named("an all_gather of rows"):
        dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def shard_positions(num: int, info: DistInfo | None = None, wrap: bool = True) -> np.ndarray:
    """The positions 0..num-1 this rank handles: every world-th one from its rank. With `wrap`, the list is first
    wrapped around to a multiple of the world size, so every rank gets as many (and runs the same number of
    collectives); a position p >= num then stands for p - num, a duplicate whose rows are written twice,
    identically. The one split formula of the code base."""
    info = info or current()
    stop = -(-num // info.world_size) * info.world_size if wrap and num else num
    return np.arange(info.rank, stop, info.world_size)


def shard(indices: np.ndarray, info: DistInfo | None = None, wrap: bool = True) -> np.ndarray:
    """This rank's share of `indices` (see shard_positions)."""
    return np.asarray(indices)[shard_positions(len(indices), info, wrap) % max(1, len(indices))]


def gather_rows_by_index(idx: torch.Tensor, values: torch.Tensor, num: int) -> torch.Tensor:
    """Rows computed on every rank's shard -> the (num, ...) tensor in dataset order, on every rank, on the host."""
    device = collective_device()
    idx_all = all_gather_rows(idx.to(device)).cpu()
    values_all = all_gather_rows(values.to(device)).cpu()
    out = torch.empty((num, *values_all.shape[1:]), dtype=values_all.dtype)
    out[idx_all] = values_all  # callers drop wrapped-around duplicates first: each row is written once
    return out


def sharded_map(
    indices: np.ndarray,
    batches: Callable[[np.ndarray], Iterable[tuple[Any, torch.Tensor]]],
    fn: Callable[[Any], Sequence[torch.Tensor]],
    num: int,
    info: DistInfo | None = None,
) -> list[torch.Tensor]:
    """The sharded pass: `fn` over this rank's share of `indices`, batch by batch, and the rows of every rank put
    back in dataset order. batches(shard) yields (inputs, dataset indices (B,)); fn(inputs) returns tensors of B
    rows each; returns, for each of them, the (num, ...) tensor of all rows on every rank, on the host (rows of
    indices not in `indices` are left uninitialised)."""
    local_idx, outputs = [], []
    for inputs, idx in batches(shard(indices, info)):
        local_idx.append(idx)
        outputs.append([t.cpu() for t in fn(inputs)])
    real = torch.from_numpy(shard_positions(len(indices), info) < len(indices))  # not the wrapped-around duplicates
    idx = torch.cat(local_idx)[real]
    return [
        gather_rows_by_index(idx, torch.cat([out[j] for out in outputs])[real], num) for j in range(len(outputs[0]))
    ]


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: without SyncBatchNorm each rank's last
    training step updated its own, so ranks evaluating or extracting features would each use different ones (and a
    run resumed from rank 0's checkpoint would differ from one never interrupted)."""
    if current().distributed:
        for buffer in model.buffers():
            moved = buffer.to(collective_device())
            with named("the broadcast of rank 0's BatchNorm statistics"):
                dist.broadcast(moved, 0)
            buffer.copy_(moved)


def collective_device() -> torch.device:
    """Where tensors must live for collectives: the current GPU under NCCL, else the CPU (gloo)."""
    if current().distributed and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
