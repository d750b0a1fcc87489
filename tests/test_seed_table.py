"""report.py's table over seeds: runs differing only in --seed grouped, mean ± standard deviation, paired gains."""

from __future__ import annotations

import numpy as np

from util.report.sources import PretrainRun
from util.report.tables import seed_table, to_csv


def run(name: str, seed: int, knn: float, floor: float, k: int = 10) -> PretrainRun:
    records = [{"epoch": 0, "knn_top1": floor, "nmi_labels": 0.1}, {"epoch": 2, "knn_top1": knn, "final": True}]
    records[-1].update(probe_top1=knn + 10, nmi_labels=0.3 + seed / 10)
    args = {"seed": seed, "k": k, "data": "cifar10", "output_dir": f"runs/{name}", "wandb_name": name}
    return PretrainRun(name, f"runs/{name}", records, None, args)


def test_runs_differing_only_in_seed_get_mean_and_deviation():
    runs = [
        run("a", 0, 45.0, 40.0),
        run("b", 1, 47.0, 41.0),
        run("c", 2, 49.0, 39.0),
        run("other-k", 3, 60.0, 40.0, 20),
    ]
    table = seed_table(runs)
    assert table is not None and len(table.rows) == 1  # the run with another --k is not a repeat
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["Runs"] == "a, b, c" and row["Seeds"] == "0, 1, 2"
    assert row["kNN"] == f"{np.mean([45, 47, 49]):.2f} ± {np.std([45, 47, 49], ddof=1):.2f}" == "47.00 ± 2.00"
    assert row["Online probe"] == "57.00 ± 2.00"
    assert row["Floor (kNN)"] == "40.00 ± 1.00"
    gains = [45 - 40, 47 - 41, 49 - 39]  # each run against its own random network
    assert row["Gain over the floor"] == f"{np.mean(gains):.2f} ± {np.std(gains, ddof=1):.2f}"
    assert "47.00 ± 2.00" in to_csv(table)


def test_no_table_without_repeats():
    assert seed_table([run("a", 0, 45.0, 40.0), run("b", 0, 47.0, 41.0, 20)]) is None


def test_published_rows_only_beside_runs_on_their_dataset():
    from util.report.published import published_rows

    assert [p.data for p in published_rows("svm", ["/datasets/VOC2007/", "cifar10"])] == ["VOC2007"]
    assert published_rows("svm", ["cifar10", "/data/tiny_split0"]) == []
    assert [p.data for p in published_rows("linear", ["/datasets/imagenet"])] == ["ImageNet"]
    assert [p.data for p in published_rows("semisup", ["/datasets/ImageNet"])] == ["ImageNet 1%", "ImageNet 10%"]
    assert len(published_rows("linear")) == 2  # no dataset given: all of them
