"""Pick the best element of a sweep: the run folder whose results.json has the highest value of a metric.

    .venv/bin/python sweep_best.py runs/semi-1pct --metric top1
    .venv/bin/python sweep_best.py runs/lin/lr=0.01 runs/lin/lr=0.1 --metric avgpool_top1 --output best.json

Arguments are run folders (each with a results.json) or a sweep folder (its sub-folders are the elements, as
slurm/submit.py --sweep writes them). Prints every element's value, best first, and writes the choice to
SWEEP_FOLDER/best.json (several run folders: to --output, which is then required). Elements without the metric
are listed as missing, never ranked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from util.checkpoint import atomic_write
from util.errors import UserError
from util.eval.results import format_table
from util.logging import setup_logging
from util.runtime import script_entry


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders, or one sweep folder holding them")
    parser.add_argument("--metric", default="top1", help="key of results.json to maximise (default: %(default)s)")
    parser.add_argument("--output", default=None, help="where to write best.json (default: in the sweep folder)")
    return parser


def sweep_elements(runs: list[str]) -> list[Path]:
    folders = [Path(r) for r in runs]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise UserError(f"{', '.join(missing)}: not a folder")
    if len(folders) == 1 and not (folders[0] / "results.json").is_file():
        folders = sorted(p for p in folders[0].iterdir() if p.is_dir())
    if not folders:
        raise UserError(f"{runs[0]} holds no run folders")
    return folders


def rank_elements(folders: list[Path], metric: str) -> tuple[list[tuple[Path, float]], list[Path]]:
    """(folder, value) best first, and the folders that have no value for the metric."""
    scored, missing = [], []
    for folder in folders:
        path = folder / "results.json"
        value = json.loads(path.read_text()).get(metric) if path.is_file() else None
        if isinstance(value, (int, float)):
            scored.append((folder, float(value)))
        else:
            missing.append(folder)
    return sorted(scored, key=lambda item: -item[1]), missing


def main(args: argparse.Namespace) -> dict:
    logger = setup_logging()
    folders = sweep_elements(args.runs)
    scored, missing = rank_elements(folders, args.metric)
    if not scored:
        raise UserError(f"no run under {args.runs[0]} has {args.metric!r} in its results.json: check --metric")
    rows = [[str(f), v] for f, v in scored] + [[str(f), None] for f in missing]
    logger.info("%s by %s:\n%s", "sweep", args.metric, format_table(["run", args.metric], rows))
    best_folder, best_value = scored[0]
    best = {
        "metric": args.metric,
        "best": str(best_folder),
        "value": best_value,
        "results": json.loads((best_folder / "results.json").read_text()),
        "ranking": [{"run": str(f), "value": v} for f, v in scored],
        "missing": [str(f) for f in missing],
    }
    if args.output is None and len(args.runs) > 1:
        raise UserError("several run folders: name the file to write with --output (e.g. --output best.json)")
    output = Path(args.output) if args.output else Path(args.runs[0]) / "best.json"
    atomic_write(output, lambda handle: handle.write((json.dumps(best, indent=2) + "\n").encode()))
    logger.info("best: %s (%s %.2f); written to %s", best_folder, args.metric, best_value, output)
    return best


if __name__ == "__main__":
    script_entry("DeepCluster sweep: pick the best element", get_args_parser, main, "")
