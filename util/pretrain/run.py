"""The skeleton both pretraining scripts share, in the order main() calls it: open_run (processes, device, seeds, the
output folder, the flags the data decides, the images and the kNN monitor), resume (restart from a checkpoint in
DINO's manner: one helper, each script passes its own objects; the W&B run; where results go), and at the end of
every epoch RunOutputs.close_epoch (alarms, log, checkpoint). Each script's main() writes its own epoch loop."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from util import dist as dist_util
from util.augment import AugmentSpec
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
from util.config import CONFIG_NAME, write_config
from util.data import ImageSource, build_source
from util.errors import UserError
from util.faults import kill_point
from util.logging import JsonLog, protocol_notes, provenance
from util.pretrain.alarms import collapse_alarms
from util.pretrain.clock import RunClock
from util.pretrain.epoch_log import closing_lines, log_epoch
from util.pretrain.maps import FEATURES_KEY, epoch_map
from util.pretrain.monitor import KnnMonitor, MonitorSpec, build_held_out
from util.pretrain.outputs import checkpoint_artifact, cluster_images
from util.runtime import start_run
from util.tracking import Tracker, WandbSpec, init_tracker

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


@dataclass(frozen=True)
class Method:
    """What a pretraining script says of itself to the shared skeleton."""

    name: str  # the checkpoint's "method": deepcluster, deepcluster-v2
    run_defining: tuple[str, ...]  # flags a resumed folder must share with its checkpoint
    departures: str  # its --help epilog, kept beside the weights and in the W&B config
    done_hint: str  # what to do when the folder already holds --epochs epochs
    epoch_metrics: tuple[str, ...] = ("train/*", "cluster/*", "time/*", "monitor/*")  # W&B keys on the epoch axis


@dataclass
class EpochContext:
    """What every epoch of a pretraining run reads: its flags, its data and monitor, where it runs (open_run), and
    its clock (resume)."""

    args: argparse.Namespace
    info: dist_util.DistInfo
    device: torch.device
    output_dir: Path
    source: ImageSource  # the training images
    monitor: KnnMonitor | None  # the kNN monitor on the labelled held-out split, None when off
    clock: RunClock | None = field(default=None, repr=False)  # says the run's estimated time after its first steps


def open_run(
    args: argparse.Namespace,
    finalize: Callable[[argparse.Namespace, int, str], argparse.Namespace],
    augment: Callable[[argparse.Namespace], AugmentSpec],
) -> EpochContext:
    """The set-up both scripts share: processes, device, seeds, the output folder (util/runtime.py); the flags the
    data decides (the script's finalize(args, world size, device type)); the training images with the augmentation
    augment(args) and the monitor's held-out split, on the GPU when they fit."""
    info, device, output_dir = start_run(args.device, args.seed, args.deterministic, args.output_dir, args.dist_timeout)
    args = finalize(args, info.world_size, device.type)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    logger.info("command: python %s (every flag as resolved: %s)", command, output_dir / CONFIG_NAME)
    source = build_source(
        data=args.data,
        split="train",
        crop=args.image_size,
        augment=augment(args),
        subset=args.subset,
        in_memory=args.in_memory,
        workers=args.workers,
        cache_dir=Path(args.data_cache),
    )
    held_out = build_held_out(args, source) if args.knn_every > 0 else None
    for images in (source, held_out):  # in-memory images on the GPU when they fit
        if images is not None:
            images.place(device)
    if args.labels_from == "dataset":
        logger.warning("--labels-from dataset: training on the TRUE labels (a sanity check, not the method)")
    monitor = KnnMonitor(MonitorSpec.from_args(args, device), source, held_out) if held_out is not None else None
    return EpochContext(args, info, device, output_dir, source, monitor)


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


def resume(run: EpochContext, method: Method, saved: dict) -> tuple[RunState, RunOutputs] | None:
    """The run's state restored from its checkpoint, if any, into `saved` (every object with state: name -> object,
    None for one this run does not have), its W&B run and where its results go; None (and the processes cleaned up)
    when the folder already holds the run. Sets run.clock for the epochs left."""
    args = run.args
    state = restart_from_checkpoint(args, run.output_dir, method.name, method.run_defining, RunState(), **saved)
    log = JsonLog(run.output_dir / "log.jsonl")
    if already_done(log, state, args, run.output_dir, method.done_hint):
        dist_util.cleanup()
        return None
    if run.info.is_main:  # the resolved flags, once the folder is known to hold this run (or none)
        write_config(args, run.output_dir)
    tracker = start_tracker(args, run.output_dir, state, method.departures, method.epoch_metrics)
    run.clock = RunClock(args.epochs - state.epoch + 1, run.info.is_main)
    payload = partial(checkpoint_payload, args, method.name, method.departures, state, **saved)
    return state, RunOutputs(args, run.output_dir, log, tracker, run.source, payload)


@dataclass
class RunOutputs:
    """Where an epoch's results go, on rank 0: log.jsonl, assignments/, the checkpoint, W&B, cluster images."""

    args: argparse.Namespace
    output_dir: Path
    log: JsonLog
    tracker: Tracker
    source: ImageSource
    payload: Callable[[], dict]  # the checkpoint of the run as it stands (checkpoint_payload)

    def close_epoch(self, record: dict, assignments: np.ndarray, state: RunState, trained: bool) -> None:
        """The end of an epoch: its collapse alarms (with --stop-on-collapse the run stops here), the run's state
        (when it trained), then log.jsonl, the epoch's map, clusters and checkpoint (end_epoch); every rank waits."""
        record["collapse"] = self.collapse_alarms(record) or None
        if trained and record["collapse"] and self.args.stop_on_collapse:
            # the record only: checkpoint.pth keeps the network the record measured (the alarm's), not its training
            self.end_epoch(record, None, trained)
            raise UserError(
                f"stopped at a collapse alarm of epoch {record['epoch']} ({record['collapse'][0]}); checkpoint.pth "
                f"keeps the network that raised it (after {state.epoch} epochs): change the recipe, or rerun without "
                "--stop-on-collapse"
            )
        if trained:
            state.epoch, state.assignments = record["epoch"] + 1, assignments
        self.end_epoch(record, assignments, trained)
        dist_util.barrier()

    def finish(self) -> None:
        """The end of the run: the W&B run closed, then the run's answer from its log (rank 0)."""
        offline = self.tracker.run_dir if self.tracker.offline else None
        self.tracker.finish()
        if dist_util.current().is_main:
            folder = str(Path(offline).parent) if offline else None  # wandb/offline-run-*/files -> the run folder
            for line in closing_lines(self.log.read(), self.output_dir, self.args.data, folder):
                logger.info("%s", line)

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

    def end_epoch(self, record: dict, assignments: np.ndarray | None, trained: bool) -> None:
        """Log the epoch and save the clusters of the network it measured (assignments/); when it trained, also the
        checkpoint, which self.payload() builds. log.jsonl comes before the checkpoint: a kill in between redoes the
        epoch, and the resume drops the record written after the checkpoint it restarts from, so every epoch is logged
        exactly once. The final measurement is logged, its clusters saved and drawn, nothing checkpointed: a later run
        with a larger --epochs redoes it (and draws the same clusters). No assignments: the record alone."""
        held_out = record.pop(FEATURES_KEY, None)  # the held-out split's (features, labels, class names): the map
        if not dist_util.current().is_main:
            return
        self.log.append(record)
        if held_out is not None:
            epoch_map(self.args.tsne_every, self.args.seed, self.tracker, self.output_dir, record, held_out)
        if assignments is None:
            log_epoch(self.tracker, record, None)
            return
        epoch = record["epoch"]
        save_assignments(self.output_dir, epoch, assignments)
        if trained:
            kill_point("after-log")
            save_checkpoint(self.payload(), checkpoint_path(self.output_dir))
        log_epoch(self.tracker, record, assignments[assignments >= 0])
        cluster_images(self.args, self.tracker, self.output_dir, epoch, self.source.images, assignments)
        if trained:
            checkpoint_artifact(self.args, self.tracker, checkpoint_path(self.output_dir), epoch + 1)


def start_tracker(
    args: argparse.Namespace, output_dir: Path, state: RunState, departures: str, epoch_metrics: tuple[str, ...]
) -> Tracker:
    """The run's W&B run (resumed from the checkpoint's run id and group), with the flags, provenance and departures
    as its config; the state records its id and group for the next checkpoint."""
    config = {**vars(args), **provenance(), "departures": protocol_notes(departures)}
    tracker = init_tracker(
        WandbSpec.from_args(args),
        output_dir,
        job_type="pretrain",
        config=config,
        run_id=state.wandb_run_id,
        group=state.wandb_group,
        epoch_metrics=epoch_metrics,
    )
    state.wandb_run_id, state.wandb_group = tracker.run_id, tracker.group
    return tracker
