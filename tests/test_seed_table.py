"""report.py's table over seeds: runs differing only in --seed grouped, mean ± standard deviation, paired gains."""

from __future__ import annotations

import numpy as np

from util.report.sources import Evaluation, PretrainRun
from util.report.tables import (
    FLOOR_GAIN_LABEL,
    GAIN_LABEL,
    Measured,
    knn_table,
    seed_table,
    semisup_table,
    to_csv,
    to_markdown,
)


def run(name: str, seed: int, knn: float, floor: float, k: int = 10, pixels: float | None = None) -> PretrainRun:
    """A finished run whose records carry its floors as the monitor writes them: the random network's (`floor`, the
    higher of its two BatchNorm variants: epoch 0's kNN, the initial statistics', is 2 points lower), the pixels'
    and the floor, the higher of the two."""
    floors = {"knn_floor_random": floor, "knn_floor_pixels": pixels, "knn_floor": max(floor, pixels or floor)}
    records = [
        {"epoch": 0, "knn_top1": floor - 2.0, "nmi_labels": 0.1, **floors},
        {"epoch": 2, "knn_top1": knn, "final": True, **floors},
    ]
    records[-1].update(probe_top1=knn + 10, nmi_labels=0.3 + seed / 10)
    args = {"seed": seed, "k": k, "data": "cifar10", "output_dir": f"runs/{name}", "wandb_name": name}
    return PretrainRun(name, f"runs/{name}", records, None, args)


def test_runs_differing_only_in_seed_get_mean_and_deviation():
    """Each run's gain is its final kNN minus its own floor: the higher of its random network's (not epoch 0's kNN,
    the initial BatchNorm statistics') and its pixels'."""
    runs = [
        run("a", 0, 45.0, 40.0, pixels=38.0),
        run("b", 1, 47.0, 41.0, pixels=44.0),  # the pixels are this run's floor
        run("c", 2, 49.0, 39.0, pixels=37.0),
        run("other-k", 3, 60.0, 40.0, 20),
    ]
    table = seed_table(runs)
    assert table is not None and len(table.rows) == 1  # the run with another --k is not a repeat
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["Runs"] == "a, b, c" and row["Seeds"] == "0, 1, 2"
    assert row["kNN"] == f"{np.mean([45, 47, 49]):.2f} ± {np.std([45, 47, 49], ddof=1):.2f}" == "47.00 ± 2.00"
    assert row["Online probe"] == "57.00 ± 2.00"
    assert row["Floor: random init (kNN)"] == "40.00 ± 1.00"
    assert row["Floor: pixels (kNN)"] == f"{np.mean([38, 44, 37]):.2f} ± {np.std([38, 44, 37], ddof=1):.2f}"
    floors = [40, 44, 39]
    assert row["Floor (kNN)"] == f"{np.mean(floors):.2f} ± {np.std(floors, ddof=1):.2f}"
    gains = [45 - 40, 47 - 44, 49 - 39]  # each run against its own floor
    assert row["Gain over the floor"] == f"{np.mean(gains):.2f} ± {np.std(gains, ddof=1):.2f}"
    assert "47.00 ± 2.00" in to_csv(table)


def test_the_knn_table_shows_each_runs_floors_and_its_gain_over_the_higher():
    table = knn_table([run("b", 1, 47.0, 41.0, pixels=44.0)], [])
    by_model = {row[0]: row for row in table.rows}
    top1 = table.columns.index("Top-1")
    assert by_model["random init (the run's floor: higher BatchNorm statistics)"][top1] == 41.0
    assert by_model["pixels (the run's floor: higher view)"][top1] == 44.0
    assert by_model[FLOOR_GAIN_LABEL][top1] == 47.0 - 44.0


def test_no_table_without_repeats():
    assert seed_table([run("a", 0, 45.0, 40.0), run("b", 0, 47.0, 41.0, 20)]) is None


def test_published_rows_only_beside_runs_on_their_dataset():
    from util.report.published import published_rows

    assert [p.data for p in published_rows("svm", ["/datasets/VOC2007/", "cifar10"])] == ["VOC2007"]
    assert published_rows("svm", ["cifar10", "/data/tiny_split0"]) == []
    assert [p.data for p in published_rows("linear", ["/datasets/imagenet"])] == ["ImageNet"]
    assert [p.data for p in published_rows("semisup", ["/datasets/ImageNet"])] == ["ImageNet 1%", "ImageNet 10%"]
    assert len(published_rows("linear")) == 2  # no dataset given: all of them


def with_semisup(run_: PretrainRun, top1: float, floor: float) -> PretrainRun:
    weights = {"pretrained": {"sha256": f"{run_.name}" * 8}, "random_init": {"sha256": "f" * 64}}
    results = {"top1": top1, "random_init_top1": floor, "top1_gain": top1 - floor, "weights": weights}
    results.update(top1_ci95=[top1 - 1, top1 + 1], data="cifar10", labelled_percent=10.0, preset="mmselfsup")
    run_.evaluations.append(Evaluation("semisup", f"{run_.where}/semisup", results))
    return run_


def test_evaluation_tables_get_rows_over_seeds():
    """The semi-supervised table: per run, its two networks and the gain; then, over the seeds, mean ± standard
    deviation of each network's number and of the gain, computed here with numpy."""
    tops, floors = [50.0, 54.0, 55.0], [30.0, 31.0, 35.0]
    runs = [with_semisup(run(name, s, 45.0, 40.0), tops[s], floors[s]) for s, name in enumerate("abc")]
    table = semisup_table(runs, [])
    by_label = {row[0]: row for row in table.rows}
    over = {label: row for label, row in by_label.items() if "over seeds" in label}
    assert set(over) == {
        "a and 2 more: mean over seeds 0,1,2",
        "a and 2 more: random init, mean over seeds 0,1,2",
        "a and 2 more: gain over random init, mean over seeds 0,1,2",
    }
    column = table.columns.index("Top-1 (%)")
    gains = np.subtract(tops, floors)
    for label, values in (("", tops), ("random init, ", floors), ("gain over random init, ", gains)):
        cell = over[f"a and 2 more: {label}mean over seeds 0,1,2"][column]
        assert isinstance(cell, Measured) and cell.n == 3
        assert cell == np.mean(values) and cell.std == np.std(values, ddof=1)
    assert sum(row[0] == GAIN_LABEL for row in table.rows) == 3  # one per run, under its two networks
    (first,) = [row for row in table.rows if row[0] == "a"]
    assert first[column].ci95 == (49.0, 51.0)  # the evaluation's own interval over the test images
    markdown = to_markdown(table)
    assert f"{np.mean(tops):.2f} ± {np.std(tops, ddof=1):.2f}" in markdown and "49.00, 51.00" in markdown
    assert "Top-1 (%) 95% low" in to_csv(table) and "Top-1 (%) std" in to_csv(table)
    # a run with two semi-supervised evaluations cannot be paired with its repeats: no row over seeds for it
    runs[0] = with_semisup(runs[0], 60.0, 30.0)
    assert not [row for row in semisup_table(runs, []).rows if "over seeds" in str(row[0])]
    assert not [row for row in knn_table(runs, []).rows if "over seeds" in str(row[0])]  # no kNN evaluation
