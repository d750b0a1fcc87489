"""Weights & Biases: rank 0 only, online when credentials exist else offline, never hangs, never loses a run."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger("deepcluster")

WANDB_MODES = ("online", "offline", "disabled")


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(requested: str | None) -> str:
    """--wandb-mode, else WANDB_MODE, else online with credentials and offline without."""
    mode = requested or os.environ.get("WANDB_MODE")
    if mode in ("dryrun",):
        mode = "offline"
    if mode in WANDB_MODES:
        return mode
    return "online" if has_wandb_credentials() else "offline"


class Tracker:
    """A thin wrapper so that scripts call one API whether W&B is on, offline, disabled or not rank 0."""

    def __init__(self, run: Any | None) -> None:
        self.run = run

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def run_dir(self) -> str | None:
        return self.run.dir if self.run is not None else None

    def log(self, metrics: dict, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.log(metrics, **kwargs)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def histogram(self, values) -> Any:
        if self.run is None:
            return None
        import wandb

        return wandb.Histogram(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def init_tracker(
    args: Any,
    output_dir: Path,
    job_type: str,
    config: dict,
    is_main: bool,
    run_id: str | None = None,
    epoch_metrics: tuple[str, ...] = (),
) -> Tracker:
    """Start (or resume, with run_id) the W&B run of this output folder; files go under output_dir/wandb."""
    mode = resolve_mode(getattr(args, "wandb_mode", None))
    if not is_main or mode == "disabled":
        return Tracker(None)
    import wandb

    kwargs = dict(
        project=args.wandb_project,
        entity=getattr(args, "wandb_entity", None),
        group=getattr(args, "wandb_group", None),
        tags=getattr(args, "wandb_tags", None) or None,
        name=getattr(args, "wandb_name", None),
        job_type=job_type,
        config=config,
        dir=str(output_dir),
        id=run_id,
        resume="allow" if run_id else None,
    )
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=60, silent=True), **kwargs)
    except Exception as err:
        if mode != "online":
            raise
        logger.warning(
            "W&B online init failed (%s); logging offline instead: `wandb sync` it later",
            err,
        )
        run = wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
    for metric in epoch_metrics:
        run.define_metric(metric, step_metric="epoch")
    logger.info("W&B run %s (%s) in %s", run.id, mode, run.dir)
    return Tracker(run)
