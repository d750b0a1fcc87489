"""The tables of mmselfsup's DeepCluster model-zoo page from pretraining runs and their evaluations: VOC07 SVM +
low-shot, linear Feature1..5 + AvgPool per dataset, kNN, semi-supervised; each with the baselines' rows and the
published rows.

Cells: a number where an evaluation measured it; MISSING where the run has no evaluation of that kind (never
filled in); None where an evaluation exists but did not measure that column (e.g. `--protocol knn` has no
Feature1..5). A number may carry its bootstrap 95 % interval over the test images (util/eval/bootstrap.py) or, in
the rows over seeds, the standard deviation over the runs (Measured). Under each evaluation's two networks, a row
of paired gains (pretrained minus random init); under the runs that differ only in --seed, their mean ± standard
deviation per cell, for the pretrained network, the random one and the gain."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from util.eval.pretrained import NETWORK_LABELS, NETWORK_PREFIXES, network_of
from util.report.published import CONFIG, LOWSHOT_KS, published_rows
from util.report.sources import Evaluation, PretrainRun, identities_of

MISSING = "missing"
NOT_EVALUATED = "-"  # the Weights cell of a network an evaluation did not run
TAP_COLUMNS = ["Feature1", "Feature2", "Feature3", "Feature4", "Feature5"]
PUBLISHED_MODEL = "DeepCluster, mmselfsup (published)"
PUBLISHED_WEIGHTS = "deepcluster_r50-bb8681e2.pth"


class Measured(float):
    """A table number with what is known of its uncertainty: ci95, the bootstrap 95 % interval over the test images;
    std and n, the sample standard deviation (n - 1) over n runs with different --seed."""

    ci95: tuple[float, float] | None
    std: float | None
    n: int

    def __new__(cls, value: float, ci95=None, std: float | None = None, n: int = 1) -> Measured:
        number = super().__new__(cls, value)
        number.ci95 = None if ci95 is None else (float(ci95[0]), float(ci95[1]))
        number.std, number.n = std, n
        return number


def measured(results: dict, key: str):
    """results[key], as a Measured with its interval where the evaluation wrote one (results.json: KEY_ci95; a W&B
    summary: KEY_ci95_low / KEY_ci95_high); None where absent."""
    value = results.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    ci95 = results.get(f"{key}_ci95")
    if ci95 is None and f"{key}_ci95_low" in results:
        ci95 = (results[f"{key}_ci95_low"], results[f"{key}_ci95_high"])
    return Measured(value, ci95) if ci95 is not None else float(value)


@dataclass
class Table:
    key: str  # file and W&B key: svm, linear_<data>, knn, semisup
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # per row: the folder / W&B run / source it was read from
    sources: list[str] = field(default_factory=list)  # the published rows' citations
    roles: list[tuple] = field(default_factory=list)  # per row: (run, a network or a gain suffix) or None

    def add(self, row: list, where: str, run: PretrainRun | None = None, role: str | None = None) -> None:
        assert len(row) == len(self.columns), (row, self.columns)
        self.rows.append(row)
        self.where.append(where)
        self.roles.append((run, role) if run is not None and role else None)


def _short(sha: str | None) -> str:
    return f"sha256:{sha[:12]}" if sha else "-"


def _data_label(data: str | None) -> str:
    if not data:
        return "-"
    return data if "/" not in str(data) else Path(str(data).rstrip("/")).name


def _eval_data(results: dict) -> str:
    """The dataset of an evaluation, with its --subset (training images) where it used one."""
    subset = results.get("subset")
    return _data_label(results.get("data")) + (f" ({subset} train images)" if subset else "")


def _config(results: dict) -> str:
    config = f"{results.get('arch', '?')}{'+sobel' if results.get('sobel') else ''}"
    return config + (" (cached)" if results.get("cached_features") else "")


def _sha(results: dict, network: str) -> str | None:
    return identities_of(results).get(network, {}).get("sha256")


def _model_label(run: PretrainRun | None, evaluation: Evaluation) -> str:
    if run is None:
        return Path(str(evaluation.results.get("pretrained", "?"))).name
    sha = _sha(evaluation.results, "pretrained")
    if run.checkpoint_sha256 and sha and sha != run.checkpoint_sha256:
        return f"{run.name} (an earlier checkpoint)"
    return run.name


def _pairs(run: PretrainRun | None, evaluation: Evaluation) -> list[tuple[str, str, str]]:
    """(row label, identity, key prefix) of the evaluation's networks: the pretrained one, the random-init one with
    BatchNorm's initial statistics, and the baselines it measured besides (the random one with recomputed statistics,
    the pixels). The identity is NOT_EVALUATED for the pretrained or initial random network the evaluation did not
    run (--baseline none), `unknown` where it measured the network but did not record its hash (W&B runs from before
    the hash was summarised); the other baselines have no row where they were not measured."""
    rows = []
    numbers = [k for k, v in evaluation.results.items() if isinstance(v, float)]
    for network, prefix in NETWORK_PREFIXES.items():
        label = _model_label(run, evaluation) if network == "pretrained" else NETWORK_LABELS[network]
        sha = _sha(evaluation.results, network)
        measured = any(network_of(k)[0] == network for k in numbers)
        if network == "pixels" and (sha or measured):
            rows.append((label, "no network", prefix))
        elif sha:
            rows.append((label, _short(sha), prefix))
        elif measured:
            rows.append((label, "unknown", prefix))
        elif network in ("pretrained", "random_init"):
            rows.append((f"{label} (not evaluated)", NOT_EVALUATED, prefix))
    return rows


def _value(results: dict, key: str, identity: str):
    """The measured number (with its interval), None where the evaluation did not measure it, MISSING for a row
    never evaluated."""
    if identity == NOT_EVALUATED:
        return MISSING
    return measured(results, key)


GAIN_LABEL = "gain over random init (paired)"
PIXEL_GAIN_LABEL = "gain over the pixels (paired)"
FLOOR_GAIN_LABEL = "gain over the floor (the higher of random init and pixels)"
GAINS = (("gain", GAIN_LABEL), ("gain_pixels", PIXEL_GAIN_LABEL))  # results suffix, row label; role = the suffix


def _role(prefix: str) -> str:
    return network_of(prefix + "x")[0]


def _gain_row(
    table: Table, run: PretrainRun | None, evaluation: Evaluation, lead: list, keys: list[str | None]
) -> None:
    """The rows of gains under an evaluation's networks (pretrained minus random init, the higher of its two
    BatchNorm variants; pretrained minus the pixels), each number with its paired interval; none where the
    evaluation has no such gain."""
    for suffix, label in GAINS:
        gains = [None if key is None else measured(evaluation.results, f"{key}_{suffix}") for key in keys]
        if any(g is not None for g in gains):
            table.add([label, *lead, *gains], evaluation.where, run, suffix)


def lowshot_ks(evaluations: list[Evaluation]) -> list[int]:
    ks = set(LOWSHOT_KS)
    for evaluation in evaluations:
        ks |= {int(m.group(1)) for key in evaluation.results if (m := re.fullmatch(r"lowshot_k(\d+)_map", key))}
    return sorted(ks)


def _by_kind(
    runs: list[PretrainRun], alone: list[Evaluation], kind: str
) -> list[tuple[PretrainRun | None, Evaluation]]:
    found = [(run, e) for run in runs for e in run.evaluations if e.kind == kind]
    return found + [(None, e) for e in alone if e.kind == kind]


def svm_table(runs: list[PretrainRun], alone: list[Evaluation]) -> Table:
    evaluations = _by_kind(runs, alone, "svm")
    ks = lowshot_ks([e for _, e in evaluations])
    k_columns = [f"k={k}" for k in ks]
    table = Table("svm", "VOC SVM / Low-shot SVM (mAP %)", ["Model", "Weights", "Config", "Data", "Best Layer", "SVM"])
    table.columns += k_columns
    for run, evaluation in evaluations:
        r = evaluation.results
        for label, identity, prefix in _pairs(run, evaluation):
            scores = [_value(r, f"{prefix}best_map", identity)] + [
                _value(r, f"{prefix}lowshot_k{k}_map", identity) for k in ks
            ]
            best = r.get(prefix + "best_layer", MISSING if identity == "-" else None)
            table.add([label, identity, _config(r), _eval_data(r), best, *scores], evaluation.where, run, _role(prefix))
        _gain_row(table, run, evaluation, ["-", _config(r), _eval_data(r), "-"], ["best_map"] + [None] * len(ks))
    _seed_rows(table, runs)
    _missing_rows(table, runs, "svm", 4)
    for published in published_rows("svm", [e.results.get("data") for _, e in evaluations]):
        values = published.values
        row = [PUBLISHED_MODEL, PUBLISHED_WEIGHTS, CONFIG, published.data, values["Best Layer"], values["SVM"]]
        table.add(row + [values.get(c) for c in k_columns], published.source)
        table.sources.append(published.source)
    return table


def linear_tables(runs: list[PretrainRun], alone: list[Evaluation]) -> list[Table]:
    """One table per dataset evaluated (ImageNet, Places205, CIFAR-10, ...), shaped like the page's."""
    evaluations = _by_kind(runs, alone, "linear")
    datasets = sorted({_data_label(e.results.get("data")) for _, e in evaluations}) or ["-"]  # one table each
    tables = []
    keys = [f"feature{i}_top1" for i in range(1, 6)] + ["avgpool_top1"]
    for data in datasets:
        title = f"Linear evaluation on {data} (top-1 %)" if data != "-" else "Linear evaluation (top-1 %)"
        key = "linear_" + re.sub(r"[^A-Za-z0-9]+", "_", data).strip("_").lower() if data != "-" else "linear"
        table = Table(key, title, ["Model", "Weights", "Config", "Data", *TAP_COLUMNS, "AvgPool"])
        for run, evaluation in evaluations:
            r = evaluation.results
            if _data_label(r.get("data")) != data:
                continue
            for label, identity, prefix in _pairs(run, evaluation):
                table.add(
                    [label, identity, _config(r), _eval_data(r), *[_value(r, prefix + k, identity) for k in keys]],
                    evaluation.where,
                    run,
                    _role(prefix),
                )
            _gain_row(table, run, evaluation, ["-", _config(r), _eval_data(r)], keys)
        _seed_rows(table, runs)
        _missing_rows(table, runs, "linear", 4, data_filter=data)
        on_this_data = [e.results.get("data") for _, e in evaluations if _data_label(e.results.get("data")) == data]
        for published in published_rows("linear", on_this_data):
            values = published.values
            row = [PUBLISHED_MODEL, PUBLISHED_WEIGHTS, CONFIG, published.data]
            table.add(row + [values.get(c) for c in [*TAP_COLUMNS, "AvgPool"]], published.source)
            table.sources.append(published.source)
        tables.append(table)
    return tables


def knn_table(runs: list[PretrainRun], alone: list[Evaluation]) -> Table:
    """Weighted kNN (k=20, T=0.07): eval_linear.py's, and each pretraining run's monitor on its final network
    beside the run's floors (its random network and the pixels, measured before training) and the gain over the higher
    of them. Not on mmselfsup's page: none published."""
    table = Table(
        "knn", "Weighted kNN (top-1 / top-5 %)", ["Model", "Weights", "Data", "Measured by", "Top-1", "Top-5"]
    )
    for run, evaluation in _by_kind(runs, alone, "linear"):
        r = evaluation.results
        if not any(prefix + "knn_top1" in r for prefix in NETWORK_PREFIXES.values()):
            continue
        for label, identity, prefix in _pairs(run, evaluation):
            row = [label, identity, _eval_data(r), "eval_linear.py"]
            table.add(
                row + [_value(r, prefix + "knn_top1", identity), _value(r, prefix + "knn_top5", identity)],
                evaluation.where,
                run,
                _role(prefix),
            )
        _gain_row(table, run, evaluation, ["-", _eval_data(r), "eval_linear.py"], ["knn_top1", "knn_top5"])
    _seed_rows(table, runs)
    for run in runs:
        data = _data_label(run.args.get("data"))
        monitored = [r for r in run.records if r.get("knn_top1") is not None]
        if not monitored:
            table.add([run.name, run.weights_label, data, "monitor (off)", MISSING, MISSING], run.where)
            continue
        if run.finished:
            final = run.records[-1]
            row = [run.name, run.weights_label, data, f"monitor, final network (epoch {final['epoch']})"]
            table.add(row + [final.get("knn_top1"), final.get("knn_top5")], run.where)
        else:
            row = [run.name, run.weights_label, data, "monitor (run not finished)", MISSING, MISSING]
            table.add(row, run.where)
        floors, seed = run.floors(), run.args.get("seed", "?")
        for key, label, identity in (
            ("knn_floor_random", "random init (the run's floor: higher BatchNorm statistics)", f"seed {seed}"),
            ("knn_floor_pixels", "pixels (the run's floor: higher view)", "no network"),
        ):
            if floors[key] is not None:
                table.add([label, identity, data, "monitor, epoch 0", floors[key], None], run.where)
        if run.finished and floors["knn_floor"] is not None and run.records[-1].get("knn_top1") is not None:
            gain = run.records[-1]["knn_top1"] - floors["knn_floor"]
            table.add([FLOOR_GAIN_LABEL, "-", data, "monitor: final minus floor", gain, None], run.where)
    return table


def semisup_table(runs: list[PretrainRun], alone: list[Evaluation]) -> Table:
    columns = ["Model", "Weights", "Pretrain Config", "Data", "Fine-tuned Config", "Top-1 (%)", "Top-5 (%)"]
    table = Table("semisup", "Semi-supervised classification (fine-tuned, top-1 / top-5 %)", columns)
    for run, evaluation in _by_kind(runs, alone, "semisup"):
        r = evaluation.results
        percent = r.get("labelled_percent")
        data = _data_label(r.get("data")) + (f" {percent:g}%" if isinstance(percent, (int, float)) else "")
        hp = r.get("hyperparameters") or {}
        tuned = f"{r.get('preset', '?')} lr {hp.get('lr', '?')} head x{hp.get('head_lr_mult', '?')}"
        for label, identity, prefix in _pairs(run, evaluation):
            scores = [_value(r, prefix + "top1", identity), _value(r, prefix + "top5", identity)]
            table.add([label, identity, _config(r), data, tuned, *scores], evaluation.where, run, _role(prefix))
        _gain_row(table, run, evaluation, ["-", _config(r), data, tuned], ["top1", "top5"])
    _seed_rows(table, runs)
    _missing_rows(table, runs, "semisup", 4)
    for published in published_rows("semisup", [e.results.get("data") for _, e in _by_kind(runs, alone, "semisup")]):
        values = published.values
        row = [PUBLISHED_MODEL, PUBLISHED_WEIGHTS, CONFIG, published.data, values["Fine-tuned Config"]]
        table.add(row + [values["Top-1 (%)"], values["Top-5 (%)"]], published.source)
        table.sources.append(published.source)
    return table


ROLE_LABELS = {
    "pretrained": "mean over seeds",
    **{network: f"{label}, mean over seeds" for network, label in NETWORK_LABELS.items()},
    "gain": "gain over random init, mean over seeds",
    "gain_pixels": "gain over the pixels, mean over seeds",
}


def _rows_of(table: Table, run: PretrainRun, role: str) -> list[list]:
    return [row for row, tag in zip(table.rows, table.roles, strict=True) if tag and tag[0] is run and tag[1] == role]


def _seed_rows(table: Table, runs: list[PretrainRun]) -> None:
    """Under the rows of runs that differ only in --seed (each with exactly one such row per role): a row per role
    (the pretrained network, the random one, the gain) holding each number's mean ± standard deviation (n - 1) over
    the runs; a text cell where the runs agree, `-` where they differ."""
    for group in seed_groups(runs):
        seeds = ",".join(str(run.args.get("seed")) for run in group)
        for role, label in ROLE_LABELS.items():
            rows = [_rows_of(table, run, role) for run in group]
            if any(len(found) != 1 for found in rows):
                continue
            cells = []
            for values in zip(*(found[0] for found in rows), strict=True):
                if all(isinstance(v, float) for v in values):
                    cells.append(Measured(float(np.mean(values)), std=float(np.std(values, ddof=1)), n=len(values)))
                else:
                    cells.append(values[0] if len(set(map(str, values))) == 1 else "-")
            cells[0] = f"{group[0].name} and {len(group) - 1} more: {label} {seeds}"
            cells[1] = f"{len(group)} runs"
            table.add(cells, group[0].where)


def _missing_rows(
    table: Table, runs: list[PretrainRun], kind: str, identity: int, data_filter: str | None = None
) -> None:
    """A MISSING row for every pretraining run without an evaluation of this kind (on this dataset): its name,
    checkpoint and arch, then `-` for the other identity columns and MISSING for every number."""
    for run in runs:
        done = [e for e in run.evaluations if e.kind == kind]
        if data_filter not in (None, "-"):
            done = [e for e in done if _data_label(e.results.get("data")) == data_filter]
            if not done and any(e.kind == kind for e in run.evaluations):
                continue  # evaluated on another dataset: that table shows it
        if done:
            continue
        row = [run.name, run.weights_label, _config(run.args)] + ["-"] * (identity - 3)
        table.add(row + [MISSING] * (len(table.columns) - identity), run.where)


# flags that do not define the experiment: runs differing only in these (and --seed) are repeats of one another
NOT_DEFINING = {"seed", "output_dir", "resume", "config", "data_cache", "workers", "device", "wandb_mode"}
NOT_DEFINING |= {"wandb_name", "wandb_group", "wandb_tags", "wandb_project", "wandb_entity", "wandb_checkpoint_every"}
SEED_METRICS = (("knn_top1", "kNN"), ("probe_top1", "Online probe"), ("nmi_labels", "NMI (labels)"))


def seed_groups(runs: list[PretrainRun]) -> list[list[PretrainRun]]:
    """Finished runs grouped by every defining flag; the groups of two or more runs with different --seed."""
    groups: dict[str, list[PretrainRun]] = {}
    for run in runs:
        if run.finished:
            key = repr(sorted((k, repr(v)) for k, v in run.args.items() if k not in NOT_DEFINING))
            groups.setdefault(key, []).append(run)
    return [g for g in groups.values() if len({r.args.get("seed") for r in g}) == len(g) > 1]


def mean_std(values: list[float]) -> str:
    """mean ± sample standard deviation (n - 1), two decimals; `-` when a run lacks the value."""
    if not values or any(v is None for v in values):
        return "-"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def seed_table(runs: list[PretrainRun]) -> Table | None:
    """Runs that differ only in --seed: mean ± standard deviation over the seeds of the final network's kNN, online
    probe and NMI, of each run's floors (the random network's, the pixels', the floor: the higher) and of the gain of
    each run over its own floor."""
    columns = ["Runs", "Seeds", "Data", *(name for _, name in SEED_METRICS)]
    columns += ["Floor: random init (kNN)", "Floor: pixels (kNN)", "Floor (kNN)", "Gain over the floor"]
    table = Table("seeds", "Over seeds: mean ± standard deviation (n - 1)", columns)
    for group in seed_groups(runs):
        finals = [run.records[-1] for run in group]
        floors = [run.floors() for run in group]
        pairs = zip(finals, floors, strict=True)
        gains = [
            None if f["knn_floor"] is None or r.get("knn_top1") is None else r["knn_top1"] - f["knn_floor"]
            for r, f in pairs
        ]
        row = [", ".join(run.name for run in group), ", ".join(str(run.args.get("seed")) for run in group)]
        row.append(_data_label(group[0].args.get("data")))
        row += [mean_std([r.get(key) for r in finals]) for key, _ in SEED_METRICS]
        row += [mean_std([f[key] for f in floors]) for key in ("knn_floor_random", "knn_floor_pixels", "knn_floor")]
        table.add(row + [mean_std(gains)], group[0].where)
    return table if table.rows else None


def holds_numbers(table: Table) -> bool:
    """Whether a table has a measured number (not only `missing` rows of runs never evaluated that way)."""
    return any(
        isinstance(value, float)
        for row, where in zip(table.rows, table.where, strict=True)
        for value in row
        if where not in table.sources
    )


def all_tables(runs: list[PretrainRun], alone: list[Evaluation]) -> list[Table]:
    """The page's tables that hold a measured number (the kNN table, the evaluations run, the seeds)."""
    tables = [svm_table(runs, alone), *linear_tables(runs, alone), knn_table(runs, alone), semisup_table(runs, alone)]
    seeds = seed_table(runs)
    return [table for table in [*tables, *([seeds] if seeds is not None else [])] if holds_numbers(table)]


# ----------------------------------------------------------------------------------------------- writers
def format_cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, Measured) and value.std is not None:
        return f"{value:.2f} ± {value.std:.2f}"
    if isinstance(value, Measured) and value.ci95 is not None:
        return f"{value:.2f} [{value.ci95[0]:.2f}, {value.ci95[1]:.2f}]"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, Path) and value.suffix == ".png":  # an image beside report.md
        return f"![{value.stem}]({value.as_posix()})"
    return str(value)


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in table.rows]
    notes = []
    if any(isinstance(v, Measured) and v.ci95 is not None for row in table.rows for v in row):
        notes.append(
            "[low, high]: bootstrap 95 % interval over the test images; gains are paired (the same resamples)."
        )
    if any(isinstance(v, Measured) and v.std is not None for row in table.rows for v in row):
        notes.append("mean ± standard deviation (n - 1) over the runs that differ only in --seed.")
    lines += [""] + notes + [f"Published row: {source}." for source in dict.fromkeys(table.sources)]
    return "\n".join(lines).rstrip() + "\n"


def expanded(table: Table) -> tuple[list[str], list[list]]:
    """The table with every uncertainty in columns of its own, after its number's column: `COLUMN 95% low`,
    `COLUMN 95% high` (bootstrap interval over the test images), `COLUMN std` (over seeds); numbers as plain floats.
    What the CSV file and the W&B table hold."""
    has_ci = [
        any(isinstance(r[i], Measured) and r[i].ci95 is not None for r in table.rows) for i in range(len(table.columns))
    ]
    has_std = [
        any(isinstance(r[i], Measured) and r[i].std is not None for r in table.rows) for i in range(len(table.columns))
    ]
    columns = []
    for name, ci, std in zip(table.columns, has_ci, has_std, strict=True):
        columns += [name] + ([f"{name} 95% low", f"{name} 95% high"] if ci else []) + ([f"{name} std"] if std else [])
    rows = []
    for row in table.rows:
        cells = []
        for value, ci, std in zip(row, has_ci, has_std, strict=True):
            interval = value.ci95 if isinstance(value, Measured) else None
            cells.append(float(value) if isinstance(value, float) else value)
            cells += list(interval or (None, None)) if ci else []
            cells += [value.std if isinstance(value, Measured) else None] if std else []
        rows.append(cells)
    return columns, rows


def to_csv(table: Table) -> str:
    """Numbers at full precision (repr), as results.json holds them; empty for not measured."""
    columns, rows = expanded(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "Read from"])
    for row, where in zip(rows, table.where, strict=True):
        writer.writerow([*("" if v is None else repr(v) if isinstance(v, float) else v for v in row), where])
    return out.getvalue()
