"""Weights & Biases: rank 0 only, online when credentials exist else offline, never hangs, never loses a run."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("deepcluster")

WANDB_MODES = ("online", "offline", "disabled")
DEFAULT_PROJECT = "deepcluster"


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

    def __init__(self, run: Any | None, group: str | None = None) -> None:
        self.run = run
        self.group = group

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def run_dir(self) -> str | None:
        return self.run.dir if self.run is not None else None

    @property
    def offline(self) -> bool:
        return self.run is not None and self.run.settings.mode in ("offline", "dryrun")

    def log(self, metrics: dict, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.log(metrics, **kwargs)

    def alert(self, title: str, text: str) -> None:
        """wandb.alert: an e-mail or Slack message when the run is online and alerts are set up in W&B."""
        if self.run is not None:
            try:
                self.run.alert(title=title, text=text)
            except Exception as err:  # noqa: BLE001 - an alert that cannot be sent must not stop the run
                logger.warning("W&B alert not sent (%s): %s", type(err).__name__, title)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def table(self, key: str, columns: list[str], rows: list[list], images_under: Path | None = None) -> None:
        """Log a wandb.Table; a cell holding a Path to a PNG (relative to `images_under`) becomes a wandb.Image."""
        if self.run is not None:
            import wandb

            def cell(value: Any) -> Any:
                if isinstance(value, Path) and value.suffix == ".png":
                    return wandb.Image(str(Path(images_under or ".") / value), caption=value.stem)
                return value

            data = [[cell(value) for value in row] for row in rows]
            self.run.log({key: wandb.Table(columns=columns, data=data, allow_mixed_types=True)})

    def histogram(self, values) -> Any:
        if self.run is None:
            return None
        import wandb

        return wandb.Histogram(values)

    def image(self, key: str, path: Path, caption: str, extra: dict | None = None) -> None:
        """Log a PNG written to disk as a wandb.Image (with `extra` metrics, e.g. the epoch, in the same step)."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption), **(extra or {})})

    def log_checkpoint(self, path: Path, epoch: int) -> None:
        """Log a checkpoint file as a `model` artifact of this run, aliases `latest` and `epoch-N`. The file is
        copied into W&B's staging area (the next epoch overwrites checkpoint.pth before an offline run is synced),
        where the copy stays until it is uploaded."""
        if self.run is None:
            return
        import wandb

        artifact = wandb.Artifact(checkpoint_artifact_name(self.run.id), type="model", metadata={"epoch": epoch})
        artifact.add_file(str(path), name=CHECKPOINT_FILE)
        self.run.log_artifact(artifact, aliases=["latest", f"epoch-{epoch}"])

    def use_checkpoint(self, lineage: Lineage) -> None:
        """Record the pretraining run and checkpoint in this run's config; when the pretraining run logged that
        epoch's checkpoint as an artifact (--wandb-checkpoint-every), record it as this run's input artifact, online
        and offline. The checkpoint is referenced, not copied: its content digest equals that of the pretraining
        run's artifact of the same epoch (W&B keys versions by digest), so W&B links this run to that version. When
        the epoch was not logged nothing is logged: the evaluation would become the artifact's producer."""
        if self.run is None:
            return
        name = f"{lineage.artifact}:epoch-{lineage.epoch}"
        self.run.config.update(
            {"pretrain_run_id": lineage.run_id, "pretrain_artifact": name if lineage.logged else None},
            allow_val_change=True,
        )
        if not lineage.logged:
            return
        import wandb

        artifact = wandb.Artifact(lineage.artifact, type="model", metadata={"epoch": lineage.epoch})
        artifact.add_reference(Path(lineage.checkpoint).resolve().as_uri(), name=CHECKPOINT_FILE)
        aliases = [f"epoch-{lineage.epoch}"]
        if not self.offline:
            self.run.use_artifact(artifact, aliases=aliases)
            return
        # wandb's use_artifact() refuses offline runs; for a draft artifact it does exactly this call (log it with
        # use_after_commit), which the offline run records and `wandb sync` replays. It is wandb's private method:
        # where a wandb release lacks it, the lineage stays in the config (pretrain_run_id) and a line says so.
        log_draft = getattr(self.run, "_log_artifact", None)
        if log_draft is None:
            logger.warning("this wandb cannot record the checkpoint artifact in an offline run: only its name is kept")
            return
        log_draft(artifact, aliases=aliases, is_user_created=True, use_after_commit=True)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


CHECKPOINT_FILE = "checkpoint.pth"


def new_run_id() -> str:
    """A fresh W&B run id (8 characters of [a-z0-9], as W&B's own), chosen here so the group can name it."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def checkpoint_artifact_name(run_id: str) -> str:
    return f"checkpoint-{run_id}"


def default_group(output_dir: Path, run_id: str) -> str:
    """A pretraining run's W&B group unless --wandb-group names one: its output folder's name and its run id."""
    return f"{Path(output_dir).name}-{run_id}"


@dataclass(frozen=True)
class Lineage:
    """The pretraining run a checkpoint comes from, as its evaluations join it in W&B."""

    run_id: str
    group: str
    project: str | None
    entity: str | None
    epoch: int
    checkpoint: str  # the file evaluated
    logged: bool  # whether the pretraining run logged this epoch's checkpoint as an artifact

    @property
    def artifact(self) -> str:
        return checkpoint_artifact_name(self.run_id)


def lineage_of(ckpt: dict | None, path: str) -> Lineage | None:
    """The W&B lineage recorded in a checkpoint of main_deepcluster.py / main_deepclusterv2.py (None for other
    layouts, for runs without W&B, and for `random`). Checkpoints written before the group was saved: their
    --wandb-group, else the `<folder>-<run id>` group (new evaluations gather there; the old run is not in it)."""
    if not ckpt or not ckpt.get("wandb_run_id"):
        return None
    run_id = ckpt["wandb_run_id"]
    args = ckpt.get("args") or {}
    args = args if isinstance(args, dict) else vars(args)
    group = ckpt.get("wandb_group") or args.get("wandb_group") or default_group(Path(path).resolve().parent, run_id)
    project, entity, epoch = args.get("wandb_project"), args.get("wandb_entity"), int(ckpt.get("epoch", 0))
    every = args.get("wandb_checkpoint_every") or 0
    logged = every > 0 and (epoch % every == 0 or epoch == args.get("epochs"))
    return Lineage(run_id, group, project, entity, epoch, str(path), logged)


@dataclass(frozen=True)
class WandbSpec:
    """The --wandb-* flags of a script (util/args.py), read once."""

    mode: str | None = None
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: Any) -> WandbSpec:
        return cls(
            mode=args.wandb_mode,
            project=args.wandb_project,
            entity=args.wandb_entity,
            group=args.wandb_group,
            name=args.wandb_name,
            tags=tuple(args.wandb_tags or ()),
        )


def _start_wandb(mode: str, kwargs: dict):
    """wandb.init in `mode`; an online start that fails (no network, bad credentials) falls back to offline, said in
    a warning: the run is never lost and can be `wandb sync`ed later."""
    import wandb

    try:
        return wandb.init(mode=mode, settings=wandb.Settings(init_timeout=60, silent=True), **kwargs)
    except Exception as err:
        if mode != "online":
            raise
        logger.warning("W&B online init failed (%s); logging offline instead: `wandb sync` it later", err)
        return wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)


def init_tracker(
    spec: WandbSpec,
    output_dir: Path,
    job_type: str,
    config: dict,
    run_id: str | None = None,
    group: str | None = None,
    epoch_metrics: tuple[str, ...] = (),
    lineage: Lineage | None = None,
) -> Tracker:
    """Start (or resume, with run_id) the W&B run of this output folder on rank 0 (other ranks: a no-op tracker);
    files go under output_dir/wandb.

    Groups: a pretraining run (job_type `pretrain`) is in --wandb-group, else in `group` (the one its checkpoint
    recorded, on resume), else in its own default_group(); an evaluation of one of its checkpoints (lineage given)
    joins that group, project and entity unless --wandb-group / --wandb-project / --wandb-entity say otherwise, and
    a new evaluation run records the checkpoint (Tracker.use_checkpoint)."""
    from util.dist import current

    mode = resolve_mode(spec.mode)
    if not current().is_main or mode == "disabled":
        return Tracker(None)

    resume = "allow" if run_id else None
    run_id = run_id or new_run_id()
    group = spec.group or group
    if group is None and job_type == "pretrain":
        group = default_group(output_dir, run_id)
    elif group is None and lineage is not None:
        group = lineage.group
    project = spec.project or (lineage.project if lineage else None) or DEFAULT_PROJECT
    entity = spec.entity or (lineage.entity if lineage else None)
    kwargs = dict(
        project=project,
        entity=entity,
        group=group,
        tags=list(spec.tags) or None,
        name=spec.name,
        job_type=job_type,
        config=config,
        dir=str(output_dir),
        id=run_id,
        resume=resume,
    )
    run = _start_wandb(mode, kwargs)
    for metric in epoch_metrics:
        run.define_metric(metric, step_metric="epoch")
    logger.info("W&B run %s (%s, group %s, job %s) in %s", run.id, mode, group, job_type, run.dir)
    tracker = Tracker(run, group)
    if lineage is not None and resume is None:  # a resumed run recorded it when it started
        tracker.use_checkpoint(lineage)
    return tracker
