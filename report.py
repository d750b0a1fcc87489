"""Tables shaped like those of mmselfsup's DeepCluster model-zoo page (the ResNet-50 + Sobel model; its benchmarks:
VOC07 SVM and low-shot SVM, linear Feature1..5 + AvgPool on ImageNet / iNat18 / Places205, semi-supervised 1 % / 10 %,
detection and segmentation; https://github.com/open-mmlab/mmselfsup/tree/main/configs/selfsup/deepcluster), and
figures, from pretraining runs and their evaluations.

    .venv/bin/python report.py runs/cifar10-cpu
    .venv/bin/python report.py runs/cifar10-cpu runs/dcv2-cifar10 --output-dir runs/report
    .venv/bin/python report.py runs/cifar10-cpu/wandb/offline-run-* runs/cifar10-cpu/linear/wandb/offline-run-*
    .venv/bin/python report.py wandb:ENTITY/deepcluster/RUN_ID wandb:ENTITY/deepcluster/EVAL_ID --output-dir rep

Sources: a pretraining run folder (main_deepcluster.py / main_deepclusterv2.py: log.jsonl, checkpoint.pth and the
evaluations written under it, any depth), an evaluation folder (results.json), a folder of such folders, an offline
W&B run folder (offline-run-*), or an online W&B run as `wandb:ENTITY/PROJECT/RUN_ID` (W&B's public API).
Evaluations given apart join the pretraining run whose checkpoint they evaluated (same sha256), else the pretraining
run their W&B run recorded, else the only run of their W&B group.

Writes to OUTPUT_DIR: report.md (every table, the figures, the cluster images), one CSV per table (numbers at full
precision, and where each row was read), curves.png (loss / NMI / kNN per epoch, all runs), cluster_sizes.png,
per_layer.png, lowshot.png, evolution_<run>.png (how the clusters evolve: util/report/evolution.py), the least
stable clusters of each run's last saved epoch with sample images (unstable_clusters.csv, unstable/*.png); and a W&B
run (job_type `report`, in the runs' group) holding the same tables as
wandb.Table and the figures as images. Every row names the weights that produced it (sha256 of the file); a run
without an evaluation of some kind is shown as `missing`, never filled in; `-`: not measured by that evaluation.
Published rows come from util/report/published.py, each with its source.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from util.args import add_wandb_args
from util.checkpoint import atomic_write
from util.data import ImageList
from util.errors import UserError
from util.logging import provenance, setup_logging
from util.pretrain.cluster_images import draw_epoch_grid, run_images, thumbnail_strip
from util.pretrain.maps import draw_saved_map, saved_map_epochs
from util.report import evolution, plots
from util.report.evolution import Overlaps, consecutive_overlaps, evolution_rows, least_stable
from util.report.sources import Evaluation, PretrainRun, attach, merge_runs, read_source
from util.report.tables import Table, all_tables, expanded, to_csv, to_markdown
from util.runtime import script_entry
from util.seeds import derive_seed
from util.tracking import WandbSpec, init_tracker

logger = logging.getLogger("deepcluster")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, description=__doc__)
    parser.add_argument("sources", nargs="+", help="run folders, evaluation folders, W&B run folders, wandb:E/P/ID")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where to write the report (default: SOURCE/report when one folder is given)",
    )
    parser.add_argument(
        "--cluster-images",
        nargs="*",
        type=int,
        default=None,
        metavar="EPOCH",
        help="draw the cluster image grid of these saved epochs of each run folder (no value: its last saved "
        "epoch) into RUN/clusters/epoch_XXXX.png, and show it in the report; needs the run's training images",
    )
    parser.add_argument(
        "--tsne",
        nargs="*",
        type=int,
        default=None,
        metavar="EPOCH",
        help="draw the t-SNE map of these epochs of each run folder from the map points its kNN monitor saved "
        "(RUN/maps/points_epoch_XXXX.npz; no value: its last saved epoch) into RUN/maps/tsne_epoch_XXXX.png, and "
        "show them in the report",
    )
    add_wandb_args(parser)
    return parser


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def requested_epochs(run: PretrainRun, saved: list[int], epochs: list[int], what: str, absent_hint: str) -> list[int]:
    """The epochs asked for (none: the last saved), all of them saved, or one line saying what is not."""
    if not saved:
        raise UserError(f"{run.folder} holds no {what}: {absent_hint}")
    wanted = epochs or [saved[-1]]
    absent = [e for e in wanted if e not in saved]
    if absent:
        raise UserError(f"{run.folder} has no saved {what} for epoch(s) {absent}: saved are {saved}")
    return wanted


def on_disk(runs: list[PretrainRun], what: str) -> list[PretrainRun]:
    for run in runs:
        if run.folder is None:
            logger.warning("%s was read from W&B: no %s on disk", run.name, what)
    return [run for run in runs if run.folder is not None]


def draw_requested_grids(runs: list[PretrainRun], epochs: list[int]) -> None:
    """Check every run first (folder, saved epochs, its data), then draw: nothing is drawn for a bad request."""
    plans = []
    for run in on_disk(runs, "assignments"):
        wanted = requested_epochs(run, run.saved_epochs(), epochs, "assignments", "no clusters to draw")
        if not {"data", "data_cache", "seed"} <= run.args.keys():
            raise UserError(f"{run.folder} has no readable checkpoint.pth with the run's flags: cannot find its images")
        plans.append((run, wanted, run_images(run.args)))
    for run, wanted, images in plans:
        for epoch in wanted:
            path = draw_epoch_grid(run.folder, epoch, images, run.assignments(epoch), run.args["seed"])
            logger.info("cluster images: %s", path)


def draw_requested_maps(runs: list[PretrainRun], epochs: list[int]) -> list[tuple[str, Path]]:
    """Check every run first (folder, saved map points), then draw: nothing is drawn for a bad request."""
    hint = "its kNN monitor or --tsne-every was off, or it was trained before map points were saved; leave out --tsne"
    plans = [
        (run, requested_epochs(run, saved_map_epochs(run.folder), epochs, "map points", hint))
        for run in on_disk(runs, "map points")
    ]
    drawn = []
    for run, wanted in plans:
        final = run.records[-1]["epoch"] if run.finished else None
        for epoch in wanted:
            path = draw_saved_map(run.folder, epoch, run.args.get("seed", 0), final=epoch == final)
            logger.info("t-SNE map: %s", path)
            drawn.append((run.name, path))
    return drawn


def run_lines(runs: list[PretrainRun]) -> list[str]:
    lines = []
    for run in runs:
        trained = sum(1 for r in run.records if not r.get("final"))
        knn = [r for r in run.records if r.get("knn_top1") is not None]
        floors = run.floors()
        monitor = "no kNN monitor"
        if len(knn) > 1 and floors["knn_floor"] is not None:
            pixels = floors["knn_floor_pixels"]
            monitor = (
                f"kNN {knn[-1]['knn_top1']:.2f} % after {knn[-1]['epoch']} epochs; floors: random init "
                f"{floors['knn_floor_random']:.2f} %, pixels "
                + ("not measured" if pixels is None else f"{pixels:.2f} %")
                + f"; gain over the higher {knn[-1]['knn_top1'] - floors['knn_floor']:+.2f}"
            )
        state = "finished" if run.finished else "not finished"
        lines.append(
            f"- **{run.name}** ({run.where}): {trained} epochs trained ({state}), {run.args.get('arch', '?')} on "
            f"{run.args.get('data', '?')}, weights {run.weights_label}; {monitor}; {len(run.evaluations)} evaluation(s)"
        )
    return lines


def named_evaluations(runs: list[PretrainRun], alone: list[Evaluation], kind: str) -> list[tuple[str, Evaluation]]:
    named = [(run.name, e) for run in runs for e in run.evaluations if e.kind == kind]
    return named + [(Path(str(e.results.get("pretrained", "?"))).name, e) for e in alone if e.kind == kind]


def cluster_grids(
    runs: list[PretrainRun], folder: str = "clusters", pattern: str = "epoch_*.png"
) -> list[tuple[str, Path]]:
    """The latest cluster image grid (or, with folder="maps", embedding map) of each run folder."""
    found = []
    for run in runs:
        grids = sorted((run.folder / folder).glob(pattern)) if run.folder else []
        if grids:
            found.append((run.name, grids[-1]))
    return found


UNSTABLE = 8  # least stable clusters shown per run, with UNSTABLE sample images each


def cluster_evolution(runs: list[PretrainRun], output_dir: Path) -> tuple[list[Table], dict[str, Path]]:
    """Per run folder with two or more saved epochs, its assignments and their overlaps read and computed once: its
    evolution rows and figure, and, where its training images are on this machine, the UNSTABLE least stable
    clusters of its last saved epoch with sample images (output_dir/unstable/*.png). The tables hold every run."""
    evolution_table = Table(
        "cluster_evolution",
        "Cluster evolution: best-match Jaccard with the epoch before, surviving clusters (Jaccard >= 0.5), purity",
        ["Run", "Epoch", "Clusters", "Jaccard q1", "Jaccard median", "Jaccard q3", "Surviving", "Purity"],
    )
    columns = ["Run", "Epoch", "Cluster", "Images", "Best Jaccard", "Best match", "Match images", "Label", "Thumbnails"]
    unstable_table = Table(
        "unstable_clusters", "Least stable clusters of the last saved epoch (lowest best-match Jaccard)", columns
    )
    figures = {}
    for run in runs:
        epochs = run.saved_epochs()
        if len(epochs) < 2:
            continue
        assignments = [run.assignments(e).astype(np.int64) for e in epochs]
        try:
            images = run_images(run.args)
        except (UserError, KeyError, OSError):  # the training images are not on this machine
            logger.warning(
                "%s: its training images are not on this machine: no purity, no least stable clusters", run.name
            )
            images = None
        if images is not None and len(images) != len(assignments[0]):
            images = None
        targets = images.targets if images is not None else None
        overlaps = consecutive_overlaps(assignments)
        rows = evolution_rows(epochs, assignments, targets, overlaps)
        for row in rows:
            cells = [row.get(k) for k in ("jaccard_q1", "jaccard_median", "jaccard_q3", "surviving", "purity_mean")]
            evolution_table.add([run.name, row["epoch"], row["clusters"], *cells], run.where)
        title = f"Cluster evolution: {run.name}"
        path = output_dir / f"evolution_{run.name}.png"
        figures[title] = evolution.draw(epochs, assignments, targets, path, title, overlaps, rows)
        if images is not None:
            add_unstable_rows(unstable_table, run, epochs[-1], assignments[-1], overlaps[-1], images, output_dir)
    return [table for table in (evolution_table, unstable_table) if table.rows], figures


def add_unstable_rows(
    table: Table, run: PretrainRun, epoch: int, after: np.ndarray, pairs: Overlaps, images: ImageList, output_dir: Path
) -> None:
    """The UNSTABLE least stable clusters of `epoch` (pairs: its overlaps with the epoch saved before), each with its
    best match, its most frequent label and a strip of UNSTABLE of its images drawn from the run's --seed."""
    rng = np.random.default_rng(derive_seed(run.args.get("seed", 0), "unstable-clusters", epoch))
    for found in least_stable(pairs, UNSTABLE):
        members = np.flatnonzero(after == found.cluster)
        drawn = np.sort(rng.choice(members, size=min(UNSTABLE, len(members)), replace=False))
        labels = images.targets[members]
        top = int(np.bincount(labels).argmax())
        thumbnails = Path("unstable") / f"{run.name}_epoch_{epoch:04d}_cluster_{found.cluster}.png"
        (output_dir / thumbnails).parent.mkdir(parents=True, exist_ok=True)
        strip = Image.fromarray(thumbnail_strip(images, drawn, UNSTABLE))
        atomic_write(output_dir / thumbnails, lambda handle, strip=strip: strip.save(handle, format="PNG"))
        label = f"{images.classes[top]} {100.0 * np.mean(labels == top):.0f}%"
        row = [run.name, epoch, found.cluster, found.size, found.jaccard, found.match, found.match_size]
        table.add(row + [label, thumbnails], run.where)


def render(
    runs: list[PretrainRun],
    tables: list[Table],
    figures: dict[str, Path],
    grids: list[tuple[str, Path]],
    output_dir: Path,
    maps: list[tuple[str, Path]] = (),
) -> str:
    parts = ["# DeepCluster report", "", *run_lines(runs), ""]
    parts.append(
        "Weights: sha256 of the file evaluated (first 12 hex digits). `missing`: the run has no evaluation of that "
        "kind; `-`: the evaluation did not measure it. Numbers in %, two decimals (the CSV files hold them exactly)."
    )
    parts.append("")
    parts += [to_markdown(table) for table in tables]
    for title, path in figures.items():
        parts += [f"### {title}", "", f"![{title}]({os.path.relpath(path, output_dir)})", ""]
    for name, path in maps:
        parts += [f"### Embedding map: {name} ({path.stem})", "", f"![t-SNE]({os.path.relpath(path, output_dir)})", ""]
    for name, path in grids:
        parts += [
            f"### Cluster images: {name} ({path.stem})",
            "",
            f"![clusters]({os.path.relpath(path, output_dir)})",
            "",
        ]
    return "\n".join(parts)


def main(args: argparse.Namespace) -> Path:
    setup_logging()
    if args.output_dir is None:
        if len(args.sources) != 1 or args.sources[0].startswith("wandb:"):
            raise UserError("several sources (or a W&B run): name the report's folder with --output-dir")
        args.output_dir = str(Path(args.sources[0]) / "report")
    runs: list[PretrainRun] = []
    loose: list[Evaluation] = []
    for source in args.sources:
        found_runs, found_evaluations = read_source(source)
        runs += found_runs
        loose += found_evaluations
    runs = merge_runs(runs)
    alone = attach(runs, loose)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.cluster_images is not None:
        draw_requested_grids(runs, args.cluster_images)
    requested_maps = draw_requested_maps(runs, args.tsne) if args.tsne is not None else []

    tables = all_tables(runs, alone)
    evolution_tables, evolution_figures = cluster_evolution(runs, output_dir)
    tables += evolution_tables
    for table in tables:
        write_text(output_dir / f"{table.key}.csv", to_csv(table))
    figures = {
        "Training curves": plots.training_curves(runs, output_dir / "curves.png"),
        "Cluster sizes per epoch": plots.cluster_sizes(runs, output_dir / "cluster_sizes.png"),
        "Linear probes per layer": plots.per_layer(
            named_evaluations(runs, alone, "linear"), output_dir / "per_layer.png"
        ),
        "Low-shot SVM": plots.lowshot(named_evaluations(runs, alone, "svm"), output_dir / "lowshot.png"),
    }
    figures = {title: path for title, path in {**figures, **evolution_figures}.items() if path is not None}
    grids = cluster_grids(runs)
    maps = cluster_grids(runs, "maps", "tsne_epoch_*.png")  # the latest t-SNE map of each run, and those asked for
    maps += [found for found in requested_maps if found not in maps]
    write_text(output_dir / "report.md", render(runs, tables, figures, grids, output_dir, maps))

    # the report run joins the runs' group, project and entity where they all share one
    for flag, key in (("wandb_group", None), ("wandb_project", "wandb_project"), ("wandb_entity", "wandb_entity")):
        values = {run.group if key is None else run.args.get(key) for run in runs} - {None}
        if getattr(args, flag) is None and len(values) == 1:
            setattr(args, flag, values.pop())
    config = {"sources": args.sources, **provenance()}
    tracker = init_tracker(WandbSpec.from_args(args), output_dir, "report", config)
    for table in tables:
        tracker.table(f"report/{table.key}", *expanded(table), images_under=output_dir)
    for title, path in figures.items():
        tracker.image(f"report/{path.stem}", path, title)
    for name, path in grids:
        tracker.image(f"report/clusters_{name}", path, f"{name} {path.stem}")
    for name, path in maps:
        tracker.image(f"report/tsne_{name}_{path.stem}", path, f"{name} {path.stem}")
    tracker.finish()
    logger.info("report: %s (%d tables, %d figures)", output_dir / "report.md", len(tables), len(figures))
    return output_dir / "report.md"


NOTES = """\
what the rows are, so tables can be read right:
  published rows  mmselfsup's DeepCluster, ResNet-50 + Sobel pretrained 200 epochs on ImageNet-1k (VOC07 SVM,
                  ImageNet / Places205 linear; semi-supervised from OpenSelfSup's zoo), each cited in the report;
                  shown only beside runs evaluated on a folder of the same name (the Data column).
  missing         a run without an evaluation of that kind: never filled in; `-`: not measured by that evaluation.
  random init     every evaluation's own random network of the same arch (the floor); the kNN table also shows
                  each run's monitor floor (its random network at epoch 0).
"""

if __name__ == "__main__":
    script_entry("DeepCluster report", get_args_parser, main, NOTES)
