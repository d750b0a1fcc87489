"""The skeleton both pretraining scripts share: the run's state, restart from a checkpoint (DINO's manner: one helper,
each script passes its own objects), the checkpoint written at the end of an epoch, and what every epoch reads."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from util import dist as dist_util
from util.checkpoint import (
    check_same_run,
    checkpoint_path,
    load_checkpoint,
    load_state_strict,
    rng_states,
    save_assignments,
    save_checkpoint,
    set_rng_states,
)
from util.config import write_config
from util.data import ImageSource
from util.errors import UserError
from util.faults import kill_point
from util.logging import JsonLog, protocol_notes, provenance
from util.pretrain.alarms import collapse_alarms
from util.pretrain.clock import RunClock
from util.pretrain.epoch_log import log_epoch
from util.pretrain.maps import FEATURES_KEY, epoch_map
from util.pretrain.outputs import checkpoint_artifact, cluster_images
from util.tracking import Tracker, init_tracker

logger = logging.getLogger("deepcluster")

FRESH_WHEN_ABSENT = ("online_probe",)  # measurement-only state a checkpoint may lack (written with --no-online-probe)
SCRIPTS = {"deepcluster": "main_deepcluster.py", "deepcluster-v2": "main_deepclusterv2.py"}  # checkpoint "method"


@dataclass
class RunState:
    """The scalars and arrays that change across epochs and must survive a restart (objects with a state_dict are
    saved beside them)."""

    epoch: int = 0  # epochs trained
    assignments: np.ndarray | None = None  # the clusters the last epoch trained on, for NMI(t, t-1)
    floors: dict | None = None  # the trivial baselines' kNN (monitor.FLOOR_KEYS), shown beside every later value
    wandb_run_id: str | None = None
    wandb_group: str | None = None


@dataclass
class EpochContext:
    """What every epoch of a pretraining run reads: its flags, its data, where it runs, its clock."""

    args: argparse.Namespace
    source: ImageSource
    held_out: ImageSource | None  # the kNN monitor's labelled split
    device: torch.device
    info: dist_util.DistInfo
    clock: RunClock  # says the run's estimated time after its first training steps


class SavedGenerator:
    """A numpy Generator as a checkpointed object (state_dict / load_state_dict of its bit generator's state)."""

    def __init__(self, generator: np.random.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict:
        return self.generator.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        self.generator.bit_generator.state = state


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel, or the module itself."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def restart_from_checkpoint(
    args: argparse.Namespace,
    output_dir: Path,
    method: str,
    run_defining: tuple[str, ...],
    state: RunState,
    **objects,
) -> RunState:
    """Resume from --resume or OUTPUT_DIR/checkpoint.pth when there is one: the checkpoint must be of `method` and of
    the same run (run_defining flags); every object is restored strictly (modules key for key, the rest through
    load_state_dict), then the RunState fields, the RNG states, and log.jsonl cut back to the epochs it holds. An
    object given as None (a module this run does not have, such as an absent neck) is skipped."""
    path = Path(args.resume) if args.resume else checkpoint_path(output_dir)
    if not args.resume and not path.is_file():
        return state
    ckpt = load_checkpoint(path)
    if ckpt.get("method", "deepcluster") != method:  # checkpoints written before the key existed are v1's
        raise UserError(f"checkpoint {path} is not a {SCRIPTS[method]} checkpoint: use a new --output-dir")
    check_same_run(ckpt.get("args", {}), args, run_defining, path)
    for name, obj in objects.items():
        if obj is None:
            continue
        if name in FRESH_WHEN_ABSENT and ckpt.get(name) is None:
            logger.warning("checkpoint %s has no %s: it starts afresh", path, name.replace("_", " "))
            continue
        if name not in ckpt:
            raise UserError(
                f"checkpoint {path} has no `{name}`: it was not written by this script; use a new --output-dir"
            )
        if isinstance(obj, nn.Module):
            load_state_strict(obj, ckpt[name], f"checkpoint {path}" + ("" if name == "backbone" else f" ({name})"))
        else:
            obj.load_state_dict(ckpt[name])
    state.epoch = ckpt["epoch"]
    state.assignments = ckpt["assignments"].astype(np.int64)
    state.floors = ckpt.get("floors")
    if state.floors is None and ckpt.get("knn_floor") is not None:  # written before the pixels were a floor
        state.floors = {"knn_floor": ckpt["knn_floor"], "knn_floor_random": ckpt["knn_floor"], "knn_floor_pixels": None}
    state.wandb_run_id, state.wandb_group = ckpt.get("wandb_run_id"), ckpt.get("wandb_group")
    set_rng_states(ckpt["rng"])
    if dist_util.current().is_main:  # the epochs after the checkpoint are redone: their records go
        JsonLog(output_dir / "log.jsonl").truncate_after(state.epoch - 1)
    logger.info("resumed from %s at epoch %d", path, state.epoch)
    return state


def checkpoint_payload(args: argparse.Namespace, method: str, departures: str, state: RunState, **objects) -> dict:
    """The checkpoint: `backbone`, `arch` and `sobel` as every evaluation reads them, each object's state_dict (None
    for an absent one), the RunState, every RNG state, provenance and the departures beside the weights."""
    return {
        "method": method,
        "departures": protocol_notes(departures),
        "epoch": state.epoch,
        "arch": args.arch,
        "sobel": args.sobel,
        "args": vars(args),
        **{name: None if obj is None else obj.state_dict() for name, obj in objects.items()},
        "assignments": state.assignments.astype(np.int32),
        "floors": state.floors,
        "rng": rng_states(),
        "wandb_run_id": state.wandb_run_id,
        "wandb_group": state.wandb_group,
        "provenance": provenance(),
    }


def already_done(log: JsonLog, state: RunState, args: argparse.Namespace, output_dir: Path, hint: str) -> bool:
    """True (and said, with `hint`) when the folder already holds --epochs epochs or more and the final network's
    record: every rank learns rank 0's answer."""
    measured = dist_util.current().is_main and any(r.get("final") and r["epoch"] == state.epoch for r in log.read())
    measured = dist_util.broadcast_object(measured)
    done = state.epoch > args.epochs or (state.epoch == args.epochs and measured)
    if done:
        logger.info("%s already holds %d epochs; %s", output_dir, state.epoch, hint)
    return done


@dataclass
class RunOutputs:
    """Where an epoch's results go, on rank 0: log.jsonl, assignments/, the checkpoint, W&B, cluster images."""

    args: argparse.Namespace
    output_dir: Path
    log: JsonLog
    tracker: Tracker
    source: ImageSource
    config_written: bool = False  # config.yaml (the resolved arguments), written with the first record

    def collapse_alarms(self, record: dict) -> list[str]:
        """The collapse alarms of this record given the logged epochs before it (util/pretrain/alarms.py), decided on
        rank 0 and known to every rank; each said in a warning line and a W&B alert."""
        alarms = []
        if dist_util.current().is_main:
            history = [r for r in self.log.read() if not r.get("final") and r["epoch"] < record["epoch"]]
            alarms = collapse_alarms(history, record, self.args.collapse_entropy)
            for alarm in alarms:
                logger.warning("collapse alarm at epoch %d: %s", record["epoch"], alarm)
                self.tracker.alert(f"collapse alarm at epoch {record['epoch']}", alarm)
        return dist_util.broadcast_object(alarms)

    def end_epoch(self, record: dict, assignments: np.ndarray | None, payload: Callable[[], dict]) -> None:
        """Log the epoch; when it trained (assignments given), also save its clusters and the checkpoint, which
        payload() builds. log.jsonl comes before the checkpoint: a kill in between redoes the epoch, and the resume
        drops the record written after the checkpoint it restarts from, so every epoch is logged exactly once. The
        final measurement (no assignments) is logged only: a later run with a larger --epochs redoes it."""
        held_out = record.pop(FEATURES_KEY, None)  # (features, labels) of the held-out split, for the map points
        if not dist_util.current().is_main:
            return
        self.log.append(record)
        if held_out is not None:
            epoch_map(self.args, self.tracker, self.output_dir, record, *held_out)
        if not self.config_written:  # with this process's first record: no folder of a refused run has one
            write_config(self.args, self.output_dir)
            self.config_written = True
        if assignments is None:
            log_epoch(self.tracker, record, None)
            return
        epoch = record["epoch"]
        save_assignments(self.output_dir, epoch, assignments)
        kill_point("after-log")
        save_checkpoint(payload(), checkpoint_path(self.output_dir))
        log_epoch(self.tracker, record, assignments[assignments >= 0])
        cluster_images(self.args, self.tracker, self.output_dir, epoch, self.source.images, assignments)
        checkpoint_artifact(self.args, self.tracker, checkpoint_path(self.output_dir), epoch + 1)


def start_tracker(
    args: argparse.Namespace, output_dir: Path, state: RunState, departures: str, epoch_metrics: tuple[str, ...]
) -> Tracker:
    """The run's W&B run (resumed from the checkpoint's run id and group), with the flags, provenance and departures
    as its config; the state records its id and group for the next checkpoint."""
    config = {**vars(args), **provenance(), "departures": protocol_notes(departures)}
    tracker = init_tracker(
        args,
        output_dir,
        job_type="pretrain",
        config=config,
        is_main=dist_util.current().is_main,
        run_id=state.wandb_run_id,
        epoch_metrics=epoch_metrics,
        group=state.wandb_group,
    )
    state.wandb_run_id, state.wandb_group = tracker.run_id, tracker.group
    return tracker


def train_and_measure(
    run: EpochContext,
    state: RunState,
    outputs: RunOutputs,
    run_epoch: Callable[[EpochContext, int, RunState, bool], tuple[dict, np.ndarray]],
    payload: Callable[[], dict],
) -> None:
    """The epochs from the checkpoint's to --epochs, each run_epoch(run, epoch, state, train) -> (record, assignments)
    then logged and checkpointed; the last pass measures the final network without training (the metrics of the
    weights in the last checkpoint)."""
    for epoch in range(state.epoch, run.args.epochs + 1):
        train = epoch < run.args.epochs
        record, assignments = run_epoch(run, epoch, state, train)
        record["collapse"] = outputs.collapse_alarms(record) or None
        if train and record["collapse"] and run.args.stop_on_collapse:
            # the record only: checkpoint.pth keeps the network the record measured (the alarm's), not its training
            outputs.end_epoch(record, None, payload)
            raise UserError(
                f"stopped at a collapse alarm of epoch {epoch} ({record['collapse'][0]}); checkpoint.pth keeps the "
                f"network that raised it (after {state.epoch} epochs): change the recipe, or rerun without "
                "--stop-on-collapse"
            )
        if train:
            state.epoch, state.assignments = epoch + 1, assignments
        outputs.end_epoch(record, assignments if train else None, payload)
        dist_util.barrier()
    outputs.tracker.finish()
