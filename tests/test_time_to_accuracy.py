"""benchmarks/time_to_accuracy.py --combine: earlier runs' measurements tabulated and drawn together, each recipe and
seed against its own floors, with the crossing minutes recomputed here by a direct scan."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_script


def fake_run(path: Path, seed: int, knn: list[float], random_floor: float, data: str = "sklearn-digits") -> dict:
    """The OUTPUT.json of a run of one recipe, as main() writes it: kNN after epochs 0, 1, ... at minutes 1, 2, ..."""
    points = [
        {"minutes": float(i + 1), "epoch": i, "knn_top1": value, "probe_top1": None} for i, value in enumerate(knn)
    ]
    run = {
        "data": data,
        "budget_min": 5.0,
        "seed": seed,
        "runs": {},
        "results": {"v1": points},
        "recipe_floors": {"v1": {"knn_floor_random": random_floor, "knn_floor_pixels": 97.0}},
    }
    path.write_text(json.dumps(run))
    return run


def first_above(points: list[dict], floor: float) -> str:
    """The crossing the table must show: the first trained measurement (epoch > 0) above the floor."""
    for point in points:
        if point["epoch"] > 0 and point["knn_top1"] > floor:
            return f"{point['minutes']:.1f} min"
    return "never"


def test_combine_tabulates_each_seed_against_its_own_floors(tmp_path):
    # seed 0 starts above its floors (epoch 0 must not count), seed 1 never passes the pixels
    runs = {
        0: fake_run(tmp_path / "s0.json", 0, [98.0, 95.0, 97.5, 96.0], random_floor=96.5),
        1: fake_run(tmp_path / "s1.json", 1, [90.0, 93.0, 96.0, 96.9], random_floor=94.0),
    }
    out = tmp_path / "combined" / "tta"
    result = run_script(
        "benchmarks/time_to_accuracy.py",
        ["--combine", *(str(tmp_path / f"s{s}.json") for s in runs), "--output", str(out)],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line for line in result.stdout.splitlines() if line.startswith("| v1")}
    assert set(rows) == {"v1, seed 0", "v1, seed 1"}
    for seed, run in runs.items():
        points, floors = run["results"]["v1"], run["recipe_floors"]["v1"]
        cells = [cell.strip() for cell in rows[f"v1, seed {seed}"].strip("|").split("|")]
        assert cells[-2:] == [
            first_above(points, floors["knn_floor_random"]),
            first_above(points, floors["knn_floor_pixels"]),
        ]
        assert cells[-3] == f"{points[-1]['knn_top1']:.2f} ({points[-1]['epoch']}, {points[-1]['minutes']:.1f})"
    assert out.with_suffix(".png").stat().st_size > 0
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["recipe_floors"]["v1, seed 1"]["knn_floor_random"] == 94.0
    assert out.with_suffix(".md").read_text() in result.stdout


def test_combine_refuses_what_cannot_be_compared(tmp_path):
    fake_run(tmp_path / "a.json", 0, [90.0, 95.0], 94.0)
    fake_run(tmp_path / "b.json", 0, [90.0, 96.0], 94.0)
    fake_run(tmp_path / "c.json", 1, [40.0, 50.0], 45.0, data="cifar10")
    cases = {
        "is in two of the files": ["a.json", "b.json"],
        "different data": ["a.json", "c.json"],
        "no such file": ["a.json", "missing.json"],
    }
    for words, names in cases.items():
        result = run_script(
            "benchmarks/time_to_accuracy.py", ["--combine", *(str(tmp_path / n) for n in names)], tmp_path
        )
        assert result.returncode != 0 and words in result.stderr, (names, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
