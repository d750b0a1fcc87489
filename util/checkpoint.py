"""Checkpoints: one owner of the file name, atomic writes, strict loads, every RNG state."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.errors import UserError
from util.faults import write_fault

CHECKPOINT_NAME = "checkpoint.pth"


def checkpoint_path(output_dir: str | Path) -> Path:
    """The one place that names the checkpoint file of an output folder."""
    return Path(output_dir) / CHECKPOINT_NAME


def atomic_write(path: Path, write: Any) -> None:
    """Call write(file_object) on a temp file in path's folder, fsync, then rename over path."""
    try:
        _atomic_write(path, write)
    except OSError as err:
        kept = f"the previous {path.name} is kept and loadable" if path.is_file() else f"no {path.name} existed yet"
        fix = "free space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the folder"
        raise UserError(
            f"cannot write {path} ({err.strerror or err}): {kept}; {fix} and rerun the same command (a run resumes "
            "from its last checkpoint)"
        ) from err


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left in `folder` (and its assignments/):
    `.NAME.XXXXXXXX` for the files a pretraining run writes (checkpoint.pth, log.jsonl, assignments/epoch_*.npy).
    Called by the process that owns the folder, at its start: one run per output folder."""
    removed = []
    for sub in (folder, folder / "assignments"):
        for path in sub.glob(".*.*") if sub.is_dir() else []:
            target, _, suffix = path.name[1:].rpartition(".")
            ours = target in (CHECKPOINT_NAME, "log.jsonl") or (target.startswith("epoch_") and target.endswith(".npy"))
            if ours and len(suffix) == 8 and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomically: a kill or a failed write leaves the previous checkpoint as it was. A failed write (a full disk,
    a lost mount) is one line saying so, exit 2."""

    def write(handle) -> None:
        torch.save(state, handle)
        write_fault("checkpoint-write")  # fault-matrix tests only (util/faults.py)

    atomic_write(path, write)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path given to --resume / --pretrained")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} cannot be read ({type(err).__name__}): it is damaged or not a checkpoint"
        ) from err


def rng_states() -> dict:
    """Every global RNG a run draws from: python, numpy, torch CPU and all CUDA devices."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def check_same_run(saved_args: dict, args: Any, keys: tuple[str, ...], path: Path) -> None:
    """Refuse to resume a checkpoint made with other values of the arguments that define a run (one line)."""
    differing = [
        f"--{k.replace('_', '-')} {saved_args.get(k)} (now {getattr(args, k)})"
        for k in keys
        if k in saved_args and saved_args[k] != getattr(args, k)
    ]
    if differing:
        raise UserError(
            f"checkpoint {path} was made with {', '.join(differing)}: use the same flags or a new --output-dir"
        )


def load_state_strict(module: torch.nn.Module, state_dict: dict, what: str) -> None:
    """load_state_dict(strict) that reports every missing/unexpected key and shape mismatch in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for name, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                parts.append(f"{name} keys {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})")
        raise UserError(f"{what} does not match the model: {'; '.join(parts)}; check --arch and --sobel")
    module.load_state_dict(state_dict, strict=True)


def save_assignments(output_dir: Path, epoch: int, assignments: np.ndarray) -> Path:
    """assignments/epoch_XXXX.npy, int16 when the cluster indices fit (ImageNet, k=10000: 2.6 MB an epoch), else
    int32."""
    dtype = np.int16 if assignments.max(initial=0) <= np.iinfo(np.int16).max else np.int32
    path = Path(output_dir) / "assignments" / f"epoch_{epoch:04d}.npy"
    atomic_write(path, lambda handle: np.save(handle, assignments.astype(dtype)))
    return path
