"""Console logging (rank-filtered), one JSON line per epoch, provenance (git sha, versions)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from util.checkpoint import atomic_write

REPO_ROOT = Path(__file__).resolve().parent.parent


def setup_logging(rank: int = 0) -> logging.Logger:
    """INFO on rank 0, WARNING elsewhere; one format for every script."""
    logger = logging.getLogger("deepcluster")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    return logger


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return (sha + ("-dirty" if dirty.stdout.strip() else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict:
    import numpy
    import torchvision

    try:
        from util.blas import faiss_blas_kernels, import_faiss

        faiss = import_faiss()
        faiss_version = getattr(faiss, "__version__", "unknown")
        faiss_blas = faiss_blas_kernels() or "not OpenBLAS"
    except ImportError:  # the torch k-means backend needs no faiss
        faiss_version = faiss_blas = "not installed"
    return {
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "faiss": faiss_version,
        "faiss_blas_kernels": faiss_blas,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda or "none",
        "command": " ".join(sys.argv),
    }


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonLog:
    """log.jsonl: one JSON object per epoch, the machine-readable record of a run.

    Rewritten atomically from the records kept so far, so a resumed run never logs an epoch twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, record: dict) -> None:
        records = [r for r in self.read() if r.get("epoch") != record.get("epoch")] + [record]
        text = "".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in records)
        atomic_write(self.path, lambda handle: handle.write(text.encode()))

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs > epoch (written after the checkpoint a resumed run restarts from), except the
        final measurement of the checkpoint's own weights (epoch + 1, marked `final`), which is still theirs."""
        records = [
            r for r in self.read() if r.get("epoch", -1) <= epoch or (r.get("final") and r.get("epoch") == epoch + 1)
        ]
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(self.path, lambda handle: handle.write(text.encode()))


def interactive() -> bool:
    """tqdm bars on terminals only; batch logs (SLURM, CI) stay quiet."""
    return sys.stderr.isatty() and os.environ.get("SLURM_JOB_ID") is None


def protocol_notes(departures: str) -> list[str]:
    """The --help epilog of a script (its protocol and every departure from it) as results.json's protocol_notes:
    one entry per item, continuation lines joined."""
    notes: list[str] = []
    for line in departures.splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("   "):
            notes.append(line.strip())
        elif notes:
            notes[-1] += " " + line.strip()
    return [" ".join(note.split()) for note in notes]
