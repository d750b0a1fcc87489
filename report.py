"""The reference page's tables and plots from pretraining runs and their evaluations.

    .venv/bin/python report.py runs/cifar10-cpu
    .venv/bin/python report.py runs/cifar10-cpu runs/dcv2-cifar10 --output-dir runs/report
    .venv/bin/python report.py runs/cifar10-cpu/wandb/offline-run-* runs/cifar10-cpu/linear/wandb/offline-run-*
    .venv/bin/python report.py wandb:ENTITY/deepcluster/RUN_ID wandb:ENTITY/deepcluster/EVAL_ID --output-dir rep

Sources: a pretraining run folder (main_deepcluster.py / main_deepclusterv2.py: log.jsonl, checkpoint.pth and the
evaluations written under it, any depth), an evaluation folder (results.json), a folder of such folders, an offline
W&B run folder (offline-run-*), or an online W&B run as `wandb:ENTITY/PROJECT/RUN_ID` (W&B's public API).
Evaluations given apart join the pretraining run whose checkpoint they evaluated (same sha256) or whose W&B group
they are in.

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
from util.errors import UserError, script_entry
from util.logging import provenance, setup_logging
from util.pretrain.cluster_images import draw_epoch_grid, run_images, thumbnail_strip
from util.pretrain.maps import draw_saved_map, saved_map_epochs
from util.report import evolution, plots
from util.report.evolution import evolution_rows, least_stable
from util.report.sources import Evaluation, PretrainRun, attach, merge_runs, read_source
from util.report.tables import Table, all_tables, expanded, to_csv, to_markdown
from util.seeds import derive_seed
from util.tracking import init_tracker

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


def draw_requested_grids(runs: list[PretrainRun], epochs: list[int]) -> None:
    """Check every run first (folder, saved epochs, its data), then draw: nothing is drawn for a bad request."""
    plans = []
    for run in runs:
        if run.folder is None:
            logger.warning("%s was read from W&B: no assignments on disk, no cluster images", run.name)
            continue
        saved = run.saved_epochs()
        if not saved:
            raise UserError(f"{run.folder} holds no assignments/epoch_*.npy: no clusters to draw")
        wanted = epochs or [saved[-1]]
        absent = [e for e in wanted if e not in saved]
        if absent:
            raise UserError(f"{run.folder} has no saved assignments for epoch(s) {absent}: saved are {saved}")
        if not {"data", "data_cache", "seed"} <= run.args.keys():
            raise UserError(f"{run.folder} has no readable checkpoint.pth with the run's flags: cannot find its images")
        plans.append((run, wanted, run_images(run.args)))
    for run, wanted, images in plans:
        for epoch in wanted:
            path = draw_epoch_grid(run.folder, epoch, images, run.assignments(epoch), run.args["seed"])
            logger.info("cluster images: %s", path)


def draw_requested_maps(runs: list[PretrainRun], epochs: list[int]) -> list[tuple[str, Path]]:
    """Check every run first (folder, saved map points), then draw: nothing is drawn for a bad request."""
    plans = []
    for run in runs:
        if run.folder is None:
            logger.warning("%s was read from W&B: no map points on disk, no t-SNE map", run.name)
            continue
        saved = saved_map_epochs(run.folder)
        if not saved:
            raise UserError(
                f"{run.folder} holds no maps/points_epoch_*.npz: its kNN monitor or --tsne-every was off, or it was "
                "trained before map points were saved; leave out --tsne"
            )
        wanted = epochs or [saved[-1]]
        absent = [e for e in wanted if e not in saved]
        if absent:
            raise UserError(f"{run.folder} has no saved map points for epoch(s) {absent}: saved are {saved}")
        plans.append((run, wanted))
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
        monitor = (
            f"kNN {knn[-1]['knn_top1']:.2f} % after {knn[-1]['epoch']} epochs, random init {knn[0]['knn_top1']:.2f} %"
            if len(knn) > 1 and knn[0]["epoch"] == 0
            else "no kNN monitor"
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


def training_images(runs: list[PretrainRun]) -> dict[str, ImageList | None]:
    """Each run folder's training images in the order of its assignments; None where they are not on this machine."""
    found: dict[str, ImageList | None] = {}
    for run in runs:
        try:  # listed only where the evolution needs them: two saved epochs or more
            found[run.name] = run_images(run.args) if len(run.saved_epochs()) >= 2 else None
        except (UserError, KeyError, OSError):
            found[run.name] = None
    return found


def cluster_evolution(
    runs: list[PretrainRun], output_dir: Path, images: dict[str, ImageList | None]
) -> tuple[Table | None, dict[str, Path]]:
    """Per run folder with two or more saved epochs: its evolution rows (one table for all runs) and figure."""
    table = Table(
        "cluster_evolution",
        "Cluster evolution: best-match Jaccard with the epoch before, surviving clusters (Jaccard >= 0.5), purity",
        ["Run", "Epoch", "Clusters", "Jaccard q1", "Jaccard median", "Jaccard q3", "Surviving", "Purity"],
    )
    figures = {}
    for run in runs:
        epochs = run.saved_epochs()
        if len(epochs) < 2:
            continue
        assignments = [np.load(run.folder / "assignments" / f"epoch_{e:04d}.npy").astype(np.int64) for e in epochs]
        targets = images[run.name].targets if images[run.name] is not None else None  # None: no purity
        if targets is not None and len(targets) != len(assignments[0]):
            targets = None
        for row in evolution_rows(epochs, assignments, targets):
            cells = [row.get(k) for k in ("jaccard_q1", "jaccard_median", "jaccard_q3", "surviving", "purity_mean")]
            table.add([run.name, row["epoch"], row["clusters"], *cells], run.where)
        title = f"Cluster evolution: {run.name}"
        figures[title] = evolution.draw(epochs, assignments, targets, output_dir / f"evolution_{run.name}.png", title)
    return (table if table.rows else None), figures


UNSTABLE = 8  # least stable clusters shown per run, with UNSTABLE sample images each


def unstable_clusters(
    runs: list[PretrainRun], output_dir: Path, all_images: dict[str, ImageList | None]
) -> Table | None:
    """Per run folder with two or more saved epochs and its training images on this machine: the UNSTABLE clusters
    of its last saved epoch with the lowest best-match Jaccard against the epoch saved before it, each with its
    best match, its most frequent label and a strip of sample images (output_dir/unstable/*.png)."""
    columns = ["Run", "Epoch", "Cluster", "Images", "Best Jaccard", "Best match", "Match images", "Label", "Thumbnails"]
    table = Table(
        "unstable_clusters", "Least stable clusters of the last saved epoch (lowest best-match Jaccard)", columns
    )
    for run in runs:
        epochs = run.saved_epochs()
        if len(epochs) < 2:
            continue
        images = all_images[run.name]
        if images is None:
            logger.warning("%s: its training images are not on this machine: no least stable clusters", run.name)
            continue
        before, after = (run.assignments(e).astype(np.int64) for e in epochs[-2:])
        if len(after) != len(images):
            continue
        rng = np.random.default_rng(derive_seed(run.args.get("seed", 0), "unstable-clusters", epochs[-1]))
        for found in least_stable(before, after, UNSTABLE):
            cluster_members = np.flatnonzero(after == found.cluster)
            drawn = np.sort(rng.choice(cluster_members, size=min(UNSTABLE, len(cluster_members)), replace=False))
            labels = images.targets[cluster_members]
            top = int(np.bincount(labels).argmax())
            thumbnails = Path("unstable") / f"{run.name}_epoch_{epochs[-1]:04d}_cluster_{found.cluster}.png"
            (output_dir / thumbnails).parent.mkdir(parents=True, exist_ok=True)
            strip = Image.fromarray(thumbnail_strip(images, drawn, UNSTABLE))
            atomic_write(output_dir / thumbnails, lambda handle, strip=strip: strip.save(handle, format="PNG"))
            label = f"{images.classes[top]} {100.0 * np.mean(labels == top):.0f}%"
            row = [run.name, epochs[-1], found.cluster, found.size, found.jaccard, found.match, found.match_size]
            table.add(row + [label, thumbnails], run.where)
    return table if table.rows else None


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
    images = training_images(runs)
    evolution_table, evolution_figures = cluster_evolution(runs, output_dir, images)
    tables += [evolution_table] if evolution_table is not None else []
    unstable = unstable_clusters(runs, output_dir, images)
    tables += [unstable] if unstable is not None else []
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
    tracker = init_tracker(args, output_dir, "report", config, True)
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
