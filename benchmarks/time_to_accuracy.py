"""Accuracy against wall-clock time: each recipe runs as its own process for at most a fixed budget on this machine,
and every kNN measurement it logs (the monitor's weighted kNN, k 20, T 0.07, of the backbone's pooled features on the
held-out split; and its online probe) is stamped with the minutes since the process started, the whole command's
wall-clock time, measurements included. The random network's floor and the pixel floor (measured by the first
recipe's run, util/pixels.py) are drawn as lines, and the table says at what minute each recipe first crosses each.

Recipes, one process each, in the order given (never two at once: they share the CPU):
    v1            main_deepcluster.py with the flags the data's rule chooses (the README's command)
    v2            main_deepclusterv2.py with its recipe for the data
    lightly-swav  lightly's SwaV on the same backbone, crops and schedule as v2 (benchmarks/peer_swav.py; needs
                  `pip install -r requirements-bench.txt`)
    NAME=SCRIPT:FLAGS  any script's command, for one-factor rows (e.g. 'lr01=main_deepcluster.py:--lr 0.1')

A recipe with a learning-rate schedule (v2, the peer) runs --epochs that end near the budget; give them with
--v2-epochs; --v2-flags passes the same flags to both (peer_swav.py takes --amp and --arch; write it with '=', as
--v2-flags=--amp, since its value starts with dashes). The budget stops a recipe that is still running (its last
measurement stands).

    .venv/bin/python benchmarks/time_to_accuracy.py --data cifar10 --budget-min 30 --recipes v1 v2 lightly-swav \\
        --output docs/figures/time_to_accuracy_cifar10
    .venv/bin/python benchmarks/time_to_accuracy.py --data sklearn-digits --budget-min 5 --recipes v1 v2

--combine trains nothing: it tabulates and draws the OUTPUT.json files of earlier runs together (one row and curve
per recipe and seed, each against the floors of its own run), e.g. the seeds of one recipe:
    .venv/bin/python benchmarks/time_to_accuracy.py --combine runs/tta-s0.json runs/tta-s1.json runs/tta-s2.json \\
        --output docs/figures/time_to_accuracy_cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINUTES = (1, 2, 5, 10, 15, 20, 25, 30, 45, 60)  # the table's columns, up to the budget


def recipe_command(name: str, data: str, out: Path, seed: int, v2_epochs: int | None, v2_flags: str = "") -> list[str]:
    """The command line of a recipe (see the module docstring); `v2_flags` go to v2 and the peer both."""
    common = ["--data", data, "--seed", str(seed), "--wandb-mode", "disabled", "--output-dir", str(out)]
    quiet = ["--cluster-images-every", "0", "--tsne-every", "0"]
    if name == "v1":
        return [sys.executable, str(REPO / "main_deepcluster.py"), *common, *quiet, "--epochs", "1000"]
    if name == "v2":
        epochs = ["--epochs", str(v2_epochs)] if v2_epochs else []
        return [sys.executable, str(REPO / "main_deepclusterv2.py"), *common, *quiet, *epochs, *v2_flags.split()]
    if name == "lightly-swav":
        epochs = ["--epochs", str(v2_epochs)] if v2_epochs else []
        peer = [sys.executable, str(REPO / "benchmarks" / "peer_swav.py"), "--only", "lightly", "--data", data]
        return [*peer, "--seed", str(seed), *epochs, *v2_flags.split(), "--jsonl", str(out / "log.jsonl")]
    label, _, spec = name.partition("=")
    script, _, flags = spec.partition(":")
    if not label or not script.endswith(".py"):
        raise SystemExit(f"recipe {name!r}: use v1, v2, lightly-swav or NAME=SCRIPT:FLAGS")
    return [sys.executable, str(REPO / script), *common, *quiet, *flags.split()]


def run_recipe(command: list[str], out: Path, budget_s: float) -> tuple[list[dict], float]:
    """Run a recipe until it ends or the budget is spent; every record of its log.jsonl stamped with the seconds
    since the start at which it appeared (polled every second). Returns the records and the seconds it ran."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    start = time.perf_counter()
    with open(out / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, stdout=stderr, stderr=stderr, start_new_session=True)
        stamped: list[dict] = []
        while True:
            finished = proc.poll() is not None
            elapsed = time.perf_counter() - start
            lines = log.read_text().splitlines() if log.is_file() else []
            for line in lines[len(stamped) :]:
                if line.strip():
                    stamped.append({**json.loads(line), "wall_s": elapsed})
            if finished or elapsed > budget_s:
                break
            time.sleep(1.0)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        elif proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): see {out / 'stderr.txt'}")
    return stamped, min(time.perf_counter() - start, budget_s)


def measured(records: list[dict]) -> list[dict]:
    """The kNN measurements of a run: wall minutes, epochs trained, kNN top-1, online probe top-1."""
    return [
        {
            "minutes": r["wall_s"] / 60,
            "epoch": r["epoch"],
            "knn_top1": r["knn_top1"],
            "probe_top1": r.get("probe_top1"),
        }
        for r in records
        if r.get("knn_top1") is not None
    ]


def crossing(points: list[dict], floor: float | None) -> float | None:
    """The first minute at which the kNN is above the floor after the random network's measurement (None: never)."""
    if floor is None:
        return None
    return next((p["minutes"] for p in points if p["epoch"] > 0 and p["knn_top1"] > floor), None)


def at_minute(points: list[dict], minute: float) -> float | None:
    """The last kNN measured by that minute."""
    before = [p["knn_top1"] for p in points if p["minutes"] <= minute]
    return before[-1] if before else None


def table(results: dict, floors: dict, budget_min: float) -> str:
    """The markdown table of every recipe's kNN by minute and its crossings; `floors` maps each recipe to its floors
    (knn_floor_random, knn_floor_pixels), and the lines under the table list them."""
    columns = [m for m in MINUTES if m <= budget_min]
    head = ["recipe", *(f"{m} min" for m in columns), "last (epochs, min)", "crosses random at", "crosses pixels at"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, points in results.items():
        cells = [name]
        cells += ["-" if (v := at_minute(points, m)) is None else f"{v:.2f}" for m in columns]
        last = points[-1] if points else None
        cells.append(f"{last['knn_top1']:.2f} ({last['epoch']}, {last['minutes']:.1f})" if last else "-")
        for key in ("knn_floor_random", "knn_floor_pixels"):
            minute = crossing(points, floors[name].get(key))
            cells.append("never" if minute is None else f"{minute:.1f} min")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, values in floors.items():
        random, pixels = (_two(values.get(key)) for key in ("knn_floor_random", "knn_floor_pixels"))
        lines.append(f"Floors of {name} (kNN top-1 %): random network {random}, pixels {pixels}  ")
    return "\n".join(lines) + "\n"


def _two(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f}"


def figure(results: dict, floors: dict, path: Path, title: str) -> None:
    """kNN and online probe against minutes, one curve per recipe (and seed), each floor drawn once per value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, (name, points) in enumerate(results.items()):
        color = f"C{index}"
        minutes = [p["minutes"] for p in points]
        axes[0].plot(minutes, [p["knn_top1"] for p in points], marker="o", color=color, label=name)
        probe = [(p["minutes"], p["probe_top1"]) for p in points if p["probe_top1"] is not None]
        if probe:
            axes[1].plot(*zip(*probe, strict=True), marker="s", color=color, label=name)
    for key, style, label in (("knn_floor_random", "--", "random network"), ("knn_floor_pixels", ":", "pixels")):
        drawn = sorted({round(values[key], 2) for values in floors.values() if values.get(key) is not None})
        for value in drawn:
            axes[0].axhline(value, color="gray", linestyle=style, label=f"{label} ({value:.2f})")
    axes[0].set(xlabel="wall-clock minutes (whole command)", ylabel="kNN top-1 (%)", title="kNN monitor")
    axes[1].set(xlabel="wall-clock minutes (whole command)", ylabel="top-1 (%)", title="online linear probe")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def combine(paths: list[str], output: str | None) -> None:
    """Tabulate and draw the OUTPUT.json files of earlier runs together, one row and curve per recipe and seed
    (their floors each from its own run); nothing is trained."""
    results, floors, budgets, data = {}, {}, [], set()
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"--combine {path}: no such file; give the .json that a run with --output wrote")
        run = json.loads(Path(path).read_text())
        if "combined" in run:
            raise SystemExit(f"--combine {path}: a combined table; give the runs' own .json files")
        data.add(run["data"])
        budgets.append(run["budget_min"])
        for name, points in run["results"].items():
            label = f"{name}, seed {run['seed']}"
            if label in results:
                raise SystemExit(f"--combine: {label} is in two of the files; give each run once")
            results[label], floors[label] = points, run["recipe_floors"][name]
    if len(data) > 1:
        raise SystemExit(f"--combine: the files measure different data ({', '.join(sorted(data))}); give one kind")
    text = table(results, floors, max(budgets))
    print(text)
    if output:
        write_outputs(Path(output), {"data": data.pop(), "combined": paths}, results, floors, text, "")


def write_outputs(output: Path, meta: dict, results: dict, floors: dict, text: str, seed_words: str) -> None:
    """OUTPUT.json (meta, results, each recipe's floors), OUTPUT.md (the table) and OUTPUT.png (the figure)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {**meta, "results": results, "recipe_floors": floors}
    output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    output.with_suffix(".md").write_text(text)
    title = f"{meta['data']}: kNN against wall-clock minutes on this machine{seed_words}"
    figure(results, floors, output.with_suffix(".png"), title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cifar10", help="cifar10 or sklearn-digits (a labelled held-out split)")
    parser.add_argument("--budget-min", type=float, default=30.0, help="wall-clock minutes per recipe")
    parser.add_argument("--recipes", nargs="+", default=["v1"], help="v1, v2, lightly-swav, NAME=SCRIPT:FLAGS")
    parser.add_argument("--v2-epochs", type=int, default=None, help="--epochs of v2 and the peer (their schedule)")
    parser.add_argument(
        "--v2-flags", default="", help="flags for v2 and the peer both, from peer_swav.py's (--v2-flags=--amp)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write OUTPUT.json, OUTPUT.md and OUTPUT.png")
    parser.add_argument("--keep", default=None, help="keep the runs' folders here (default: a temporary folder)")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        default=None,
        help="train nothing: tabulate and draw the OUTPUT.json of earlier runs (seeds, recipes) together",
    )
    args = parser.parse_args()
    if args.combine:
        combine(args.combine, args.output)
        return
    results, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for index, name in enumerate(args.recipes):
            label = name.partition("=")[0]
            out = root / f"{index}-{label}"
            command = recipe_command(name, args.data, out, args.seed, args.v2_epochs, args.v2_flags)
            print(f"== {label}: {' '.join(command)}", flush=True)
            records, seconds = run_recipe(command, out, 60 * args.budget_min)
            results[label] = measured(records)
            runs[label] = {"command": command, "seconds": seconds, "records": records}
            for point in results[label]:
                print(
                    f"  {point['minutes']:6.1f} min  epoch {point['epoch']:3d}  kNN {point['knn_top1']:.2f}", flush=True
                )
    # the floors are measured by the runs that log them (v1, v2) and are the same for every recipe of one seed
    # and data; a recipe that logs none (the peer) is compared with the first run's
    logged = [record_floors(runs[label]["records"]) for label in results]
    first = next((values for values in logged if values), {})
    floors = {label: values or first for label, values in zip(results, logged, strict=True)}
    text = table(results, floors, args.budget_min)
    print(text)
    if args.output:
        meta = {"data": args.data, "budget_min": args.budget_min, "seed": args.seed, "runs": runs}
        write_outputs(Path(args.output), meta, results, floors, text, f" (seed {args.seed})")


def record_floors(records: list[dict]) -> dict:
    """The floors a run logged with its first measurement ({} if it logs none)."""
    first = next((r for r in records if r.get("knn_floor") is not None), None)
    return {} if first is None else {key: first.get(key) for key in ("knn_floor_random", "knn_floor_pixels")}


if __name__ == "__main__":
    main()
