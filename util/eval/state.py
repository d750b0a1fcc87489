"""The resumable state of an evaluation folder, shared by eval_linear.py and eval_semisup.py: every finished task's
results under its key (the weights' sha256 and every protocol flag), the task in progress, and the W&B run of each
set of tasks. A task resumes, or its results are reused, only under the same key: no number outlives its weights."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from util import dist as dist_util
from util.checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger("deepcluster")

VERSION = 2  # states of other versions are not keyed by their weights: moved aside, never used


@dataclass
class EvalState:
    path: Path
    tasks: dict = field(default_factory=dict)  # key -> {"name", "weights", "results"}
    current: dict | None = None  # the task in progress: {"key", "epoch", its model / optimizer states, ...}
    wandb_runs: dict = field(default_factory=dict)  # plan (the hash of a set of task keys) -> W&B run id

    @classmethod
    def load(cls, path: Path, keyed_since: int = VERSION) -> EvalState:
        """Rank 0 reads the file; every rank gets it. States from `keyed_since` on hold keyed tasks (eval_semisup's
        version 1 did, with one W&B run id that is not kept); older ones are moved aside with a warning."""
        saved = None
        if dist_util.current().is_main and path.is_file():
            saved = load_checkpoint(path)
            if not keyed_since <= saved.get("version", 0) <= VERSION:
                aside = path.with_name(path.name + ".unkeyed")
                path.replace(aside)
                logger.warning("%s holds results not keyed by their weights: moved to %s, starting afresh", path, aside)
                saved = None
        saved = dist_util.broadcast_object(saved)
        if saved is None:
            return cls(path)
        return cls(path, saved["tasks"], saved["current"], saved.get("wandb_runs", {}))

    def save(self) -> None:
        """Atomically, on rank 0."""
        if dist_util.current().is_main:
            state = {"version": VERSION, "tasks": self.tasks, "current": self.current, "wandb_runs": self.wandb_runs}
            save_checkpoint(state, self.path)

    def resumable(self, key: str) -> dict | None:
        """The saved progress of the task `key`, if it is the one in progress."""
        return self.current if self.current and self.current["key"] == key else None

    def progress(self, key: str, **saved) -> None:
        """Record the task in progress (after an epoch) and save."""
        self.current = {"key": key, **saved}
        self.save()

    def finish(self, key: str, name: str, identity: dict, results: dict) -> None:
        """A finished task: its name, the identity ({path, sha256}) of the network it scored, its results."""
        self.tasks[key] = {"name": name, "identity": identity, "results": results}
        self.current = None
        self.save()


def plan_id(keys: list[str]) -> str:
    """One W&B run per set of tasks: the hash of their keys."""
    return hashlib.sha256("".join(keys).encode()).hexdigest()
