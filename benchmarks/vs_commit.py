"""Training images/s of main_deepcluster.py here against an earlier commit of this repository, on this machine, with
the same command, run side by side (the two trees alternate, best of --repeats).

The earlier commit is checked out with `git worktree` into a temporary folder and run with this tree's Python; each
run trains --epochs epochs and the training phase's images/s (log.jsonl `images_per_s`, the SGD steps with their data
pipeline) of its last epoch is kept. Both trees read the same decoded-image cache.

    .venv/bin/python benchmarks/vs_commit.py --commit "$(git rev-list -1 --before=2026-11-28 HEAD)"
    .venv/bin/python benchmarks/vs_commit.py --commit "$(git rev-list -1 --before=2026-11-28 HEAD)" --extra=--amp
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_rate(tree: Path, argv: list[str], out: Path) -> float:
    """Run main_deepcluster.py in `tree`; the last epoch's training images/s."""
    cmd = [sys.executable, "main_deepcluster.py", *argv, "--output-dir", str(out)]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {tree}:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("images_per_s", 0) > 0][-1]["images_per_s"]  # the last trained epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", required=True, help="the earlier commit (any git revision)")
    parser.add_argument(
        "--args",
        default="--data cifar10 --subset 10000 --epochs 1 --knn-every 0 --wandb-mode disabled",
        help="the command's flags, the same for both trees (default: %(default)s)",
    )
    parser.add_argument("--extra", default="", help="flags for this tree only (e.g. --amp), said in the table")
    parser.add_argument("--repeats", type=int, default=2)
    own = parser.parse_args()
    argv = shlex.split(own.args)
    rates: dict[str, list[float]] = {"earlier": [], "here": []}
    with tempfile.TemporaryDirectory() as tmp:
        earlier = Path(tmp) / "earlier"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(earlier), own.commit], cwd=ROOT, check=True, capture_output=True
        )
        try:
            for repeat in range(own.repeats):
                for name, tree, extra in (("earlier", earlier, []), ("here", ROOT, shlex.split(own.extra))):
                    rate = train_rate(tree, argv + extra, Path(tmp) / f"{name}-{repeat}")
                    rates[name].append(rate)
                    print(f"round {repeat + 1}: {name:8} {rate:8.1f} img/s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(earlier)], cwd=ROOT, check=False)
    best = {name: max(values) for name, values in rates.items()}
    print(f"main_deepcluster.py {own.args}  (this tree adds: {own.extra or 'nothing'}); best of {own.repeats}")
    print(f"{own.commit:>12}: {best['earlier']:.1f} img/s")
    print(f"{'this tree':>12}: {best['here']:.1f} img/s   ratio {best['here'] / best['earlier']:.2f}x (goal >= 1.30x)")


if __name__ == "__main__":
    main()
