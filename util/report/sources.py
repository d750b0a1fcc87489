"""What a report is made of, read from run folders or from W&B runs (offline run folders on disk, or online runs
through the public API): pretraining runs with their per-epoch records, and the evaluations of their checkpoints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from util.errors import UserError
from util.report.wandb_offline import read_run
from util.tracking import lineage_of

EVAL_KINDS = ("linear", "svm", "semisup")
_HISTORY_GROUPS = ("train/", "cluster/", "monitor/", "time/")
_CONFIG_META = ("pretrained", "arch", "sobel", "data", "subset", "cached_features", "preset", "solver")


def identities_of(results: dict) -> dict[str, dict]:
    """{network: {path, sha256}} of an evaluation's results (`identities`; `weights` in files written before)."""
    return results.get("identities") or results.get("weights") or {}


@dataclass
class Evaluation:
    kind: str  # linear, svm or semisup
    where: str  # the folder or W&B run it was read from
    results: dict  # results.json: the numbers and their meta (weights, data, arch, ...)
    pretrain_run_id: str | None = None  # the W&B run id of the pretraining run whose checkpoint it read

    def identity(self) -> str:
        """What makes two readings of one evaluation the same (its folder and its W&B run, say)."""
        numbers = sorted(  # what results.json and the W&B summary both hold: W&B gives ints back as floats and
            (k, float(v))  # intervals as KEY_ci95_low / _high, and adds the last logged history values (KEY/..., epoch)
            for k, v in self.results.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and "/" not in k
            and k != "epoch"
            and not k.endswith(("_ci95_low", "_ci95_high"))
        )
        weights = {network: w.get("sha256") for network, w in identities_of(self.results).items()}
        return json.dumps([self.kind, weights, str(self.results.get("data")), numbers], sort_keys=True)


@dataclass
class PretrainRun:
    name: str
    where: str
    records: list[dict]  # log.jsonl (one per epoch, then the final network's)
    checkpoint_sha256: str | None  # of checkpoint.pth: the weights the final record and the evaluations measure
    args: dict
    group: str | None = None
    run_id: str | None = None  # its W&B run id
    folder: Path | None = None  # None for runs read from W&B
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.records) and bool(self.records[-1].get("final"))

    @property
    def weights_label(self) -> str:
        """How the report names the weights of this run's final record: the checkpoint's hash, or the W&B run."""
        if self.checkpoint_sha256:
            return f"sha256:{self.checkpoint_sha256[:12]}"
        return f"W&B run {self.run_id}" if self.run_id else "-"

    def floors(self) -> dict:
        """The run's kNN floors from its monitored records: knn_floor (the floor: the higher trivial baseline),
        knn_floor_random (the random network, the higher of its BatchNorm statistics) and knn_floor_pixels (None where
        not measured). Records logged before the pixel floor hold the random network's as knn_floor; older ones no
        floor at all, where epoch 0's kNN (the random network as initialised) stands in."""
        for record in self.records:
            if record.get("knn_floor") is not None:
                random = record["knn_floor_random"] if "knn_floor_random" in record else record["knn_floor"]
                return {
                    "knn_floor": record["knn_floor"],
                    "knn_floor_random": random,
                    "knn_floor_pixels": record.get("knn_floor_pixels"),
                }
        first = next((r for r in self.records if r.get("knn_top1") is not None), None)
        value = first["knn_top1"] if first is not None and first["epoch"] == 0 else None
        return {"knn_floor": value, "knn_floor_random": value, "knn_floor_pixels": None}

    def saved_epochs(self) -> list[int]:
        if self.folder is None:
            return []
        return sorted(int(f.stem.split("_")[1]) for f in (self.folder / "assignments").glob("epoch_*.npy"))

    def assignments(self, epoch: int) -> np.ndarray:
        """The saved cluster assignments of an epoch (run folders only)."""
        return np.load(self.folder / "assignments" / f"epoch_{epoch:04d}.npy")


def eval_kind(results: dict) -> str:
    """linear / svm / semisup, from results.json (`evaluation`, or the keys of files written before it existed)."""
    if results.get("evaluation") in EVAL_KINDS:
        return results["evaluation"]
    if "solver" in results:
        return "svm"
    if "preset" in results:
        return "semisup"
    return "linear"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_evaluation(folder: Path) -> Evaluation:
    results = json.loads((folder / "results.json").read_text())
    return Evaluation(eval_kind(results), str(folder), results)


def _evaluations_under(folder: Path) -> list[Evaluation]:
    found = []
    for path in sorted(folder.rglob("results.json")):
        if "wandb" not in path.relative_to(folder).parts:
            found.append(_read_evaluation(path.parent))
    return found


def _evaluates(evaluation: Evaluation, checkpoint: Path, sha: str | None) -> bool:
    """Whether an evaluation read this run's checkpoint: the same file (maybe an earlier version of it), or the
    same weights."""
    identity = identities_of(evaluation.results).get("pretrained", {})
    if sha and identity.get("sha256") == sha:
        return True
    path = identity.get("path") or evaluation.results.get("pretrained")
    return bool(path) and Path(path).resolve() == checkpoint.resolve()


def _checkpoint_meta(path: Path) -> tuple[dict, str | None, str | None]:
    """The args, W&B group and W&B run id a checkpoint records (weights_only=False: our own files)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    args = ckpt.get("args") or {}
    lineage = lineage_of(ckpt, str(path))
    args = args if isinstance(args, dict) else vars(args)
    return args, (lineage.group if lineage else None), ckpt.get("wandb_run_id")


def read_folder(folder: Path) -> tuple[list[PretrainRun], list[Evaluation]]:
    """A pretraining run folder (log.jsonl) with the evaluations of its checkpoint found under it (others found
    there are returned apart), an evaluation folder (results.json), an offline W&B run, or a folder of these (a
    run's `wandb/` folder, say)."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass run folders, evaluation folders or W&B run folders")
    if list(folder.glob("run-*.wandb")):
        return read_wandb_offline(folder)
    if (folder / "log.jsonl").is_file():
        checkpoint = folder / "checkpoint.pth"
        args, group, run_id = _checkpoint_meta(checkpoint) if checkpoint.is_file() else ({}, None, None)
        sha = file_sha256(checkpoint) if checkpoint.is_file() else None
        found = _evaluations_under(folder)
        mine = [e for e in found if _evaluates(e, checkpoint, sha)]
        run = PretrainRun(folder.name, str(folder), _read_jsonl(folder / "log.jsonl"), sha, args, group, run_id, folder)
        run.evaluations = mine
        return [run], [e for e in found if e not in mine]
    if (folder / "results.json").is_file():
        return [], [_read_evaluation(folder)]
    runs, evaluations = [], []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "wandb"):
        if any((child / name).is_file() for name in ("log.jsonl", "results.json")) or list(child.glob("run-*.wandb")):
            found_runs, found_evaluations = read_folder(child)
            runs += found_runs
            evaluations += found_evaluations
    if not runs and not evaluations:
        raise UserError(
            f"{folder} holds no log.jsonl or results.json: pass the output folder of a pretraining run or evaluation"
        )
    return runs, evaluations


# ------------------------------------------------------------------------------------------------ W&B
def history_records(history: list[dict], final_epoch: int | None) -> list[dict]:
    """A pretraining run's W&B history as log.jsonl records: `train/loss` -> `loss`, ...; rows that hold no
    record metric (an image logged at an epoch) are skipped; an epoch logged twice (a run extended with a larger
    --epochs measures its old last network again) keeps its last row."""
    by_epoch: dict[int, dict] = {}
    for item in history:
        if "epoch" not in item:
            continue
        record = {
            key.split("/", 1)[1]: value
            for key, value in item.items()
            if key.startswith(_HISTORY_GROUPS) and "." not in key and not isinstance(value, dict)
        }
        if record:
            by_epoch[int(item["epoch"])] = {"epoch": int(item["epoch"]), **record}
    records = [by_epoch[e] for e in sorted(by_epoch)]
    if records and records[-1]["epoch"] == final_epoch:
        records[-1]["final"] = True
    return records


def _from_wandb(
    where: str, run: dict, config: dict, summary: dict, history: list[dict]
) -> tuple[list[PretrainRun], list[Evaluation]]:
    """A W&B run as the report's parts: a pretraining run (history -> per-epoch records) or an evaluation
    (summary + config -> results.json's numbers and meta). `run`: id, name, group, job_type."""
    job_type = run.get("job_type") or ""
    if job_type == "pretrain":
        records = history_records(history, config.get("epochs"))
        name = run.get("name") or run["id"]
        return [PretrainRun(name, where, records, None, config, run.get("group"), run["id"])], []
    kind = job_type.removeprefix("eval_")
    if kind not in EVAL_KINDS:
        raise UserError(
            f"{where} is a W&B run of job type {job_type!r}: pass pretraining (pretrain) or evaluation "
            f"({', '.join(EVAL_KINDS)}) runs"
        )
    # W&B's JSON gives 75.0 back as 75: numbers are floats again, as in results.json
    results = {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in summary.items()
        if not k.startswith("_") and not isinstance(v, dict)
    }
    identities = {
        k.split("/", 1)[1]: {"sha256": v.removeprefix("sha256:")}
        for k, v in summary.items()
        if k.startswith(("identity/", "weights/"))  # weights/: runs written before identity/
    }
    results["identities"] = identities or identities_of(config)  # runs written before the identities were summarised
    for key in _CONFIG_META:
        if key in config and key not in results:
            results[key] = config[key]
    if "labelled_percent" not in results and config.get("percent") is not None:
        results["labelled_percent"] = float(config["percent"])
    if isinstance(summary.get("hyperparameters"), dict):
        results["hyperparameters"] = summary["hyperparameters"]
    results["wandb_group"] = run.get("group")
    return [], [Evaluation(kind, where, results, config.get("pretrain_run_id"))]


def read_wandb_offline(run_dir: Path) -> tuple[list[PretrainRun], list[Evaluation]]:
    """An offline W&B run folder (offline-run-*), read from its own run file (util/report/wandb_offline.py)."""
    found = read_run(run_dir)
    run = {**found["run"], "id": found["run"]["id"] or run_dir.name}
    return _from_wandb(str(run_dir), run, found["config"], found["summary"], found["history"])


def read_wandb_online(path: str) -> tuple[list[PretrainRun], list[Evaluation]]:
    """`entity/project/run_id` through W&B's public API (needs credentials and the network)."""
    import wandb

    try:
        run = wandb.Api().run(path)
    except Exception as err:
        raise UserError(
            f"cannot read the W&B run {path} ({type(err).__name__}: {err}): check the path and `wandb login`"
        ) from err
    history = list(run.scan_history())
    config = {k: v for k, v in run.config.items() if not k.startswith("_")}
    meta = {"id": run.id, "name": run.name, "group": run.group, "job_type": run.job_type}
    return _from_wandb(path, meta, config, dict(run.summary), history)


def read_source(source: str) -> tuple[list[PretrainRun], list[Evaluation]]:
    """A folder on disk (run, evaluation, offline W&B run, or a folder of them), or `wandb:entity/project/id`."""
    if source.startswith("wandb:"):
        return read_wandb_online(source.removeprefix("wandb:"))
    path = Path(source)
    if not path.exists():
        raise UserError(f"{source} does not exist: pass a run folder, an evaluation folder, or wandb:ENTITY/PROJECT/ID")
    return read_folder(path)


def merge_runs(runs: list[PretrainRun]) -> list[PretrainRun]:
    """One run per W&B run id: a resumed offline run writes one offline-run-* folder per start, each with the
    epochs of that start; their records join (a later reading of an epoch wins; a run folder wins over W&B)."""
    merged: dict[str, PretrainRun] = {}
    out = []
    for run in sorted(runs, key=lambda r: r.folder is None):  # run folders first
        key = run.run_id
        if key is None or key not in merged:
            out.append(run)
            if key is not None:
                merged[key] = run
            continue
        kept = merged[key]
        if kept.folder is not None:
            continue  # the folder's log.jsonl already holds every epoch
        by_epoch = {r["epoch"]: r for r in kept.records}
        by_epoch.update({r["epoch"]: r for r in run.records})
        kept.records = [by_epoch[e] for e in sorted(by_epoch)]
    return out


def attach(runs: list[PretrainRun], evaluations: list[Evaluation]) -> list[Evaluation]:
    """Evaluations given apart join the pretraining run whose checkpoint they evaluated: same weights (sha256),
    else the pretraining run id their W&B run recorded, else the only run of their W&B group. The others are
    returned, reported on their own. The same evaluation read twice (its folder and its W&B run) counts once."""
    seen = {e.identity() for run in runs for e in run.evaluations}
    alone = []
    for evaluation in evaluations:
        if evaluation.identity() in seen:
            continue
        seen.add(evaluation.identity())
        sha = identities_of(evaluation.results).get("pretrained", {}).get("sha256")
        owner = next((r for r in runs if sha and sha == r.checkpoint_sha256), None)
        if owner is None and evaluation.pretrain_run_id:
            owner = next((r for r in runs if r.run_id == evaluation.pretrain_run_id), None)
        group = evaluation.results.get("wandb_group")
        in_group = [r for r in runs if group and r.group == group]
        if owner is None and len(in_group) == 1:
            owner = in_group[0]
        if owner is None:
            alone.append(evaluation)
        else:
            owner.evaluations.append(evaluation)
    return alone
