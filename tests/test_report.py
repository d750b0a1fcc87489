"""report.py and W&B lineage, end to end on real runs: a pretraining run (offline W&B, checkpoint artifact,
cluster images), eval_linear.py and eval_svm.py on its checkpoint, then report.py on the run folder and on the
offline W&B runs. The generated Markdown / CSV are read back against results.json and log.jsonl, the offline W&B
files against the same numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import run_in_one_process, run_script, wandb_records, wandb_run_dir, wandb_summary
from util.eval.pretrained import NETWORK_PREFIXES
from util.pretrain.cluster_images import choose_clusters
from util.report.sources import PretrainRun, history_records, merge_runs
from util.report.tables import GAIN_LABEL, PIXEL_GAIN_LABEL

pytestmark = pytest.mark.slow

IMAGES = ["--image-size", "32", "--workers", "0"]
LINEAR_KEYS = {f"Feature{i}": f"feature{i}_top1" for i in range(1, 6)} | {"AvgPool": "avgpool_top1"}
SVM_KEYS = {"SVM": "best_map", "k=1": "lowshot_k1_map", "k=2": "lowshot_k2_map"}


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_split_folder):
    tmp = tmp_path_factory.mktemp("report")
    run = tmp / "run"
    pretrain = [
        *("--data", str(tiny_split_folder), "--knn-data", str(tiny_split_folder / "val"), "--arch", "resnet18"),
        *("--k", "6", "--pca-dim", "16", "--batch-size", "16", "--reassign", "1", "--epochs", "2", *IMAGES),
        *("--cluster-images-every", "1", "--wandb-checkpoint-every", "2", "--output-dir", str(run)),
    ]
    proc = run_script("main_deepcluster.py", pretrain, tmp)
    assert proc.returncode == 0, proc.stderr
    checkpoint = str(run / "checkpoint.pth")
    common = ["--pretrained", checkpoint, "--data", str(tiny_split_folder), *IMAGES]
    linear = [*common, "--cached-features", "--epochs", "1", "--batch-size", "32", "--output-dir", str(run / "linear")]
    svm = [*common, "--costs", "1", "--lowshot-ks", "1,2", "--lowshot-samples", "2", "--output-dir", str(run / "svm")]
    offline = [str(run / "wandb"), str(run / "linear" / "wandb"), str(run / "svm" / "wandb")]  # W&B runs alone
    from_wandb = [*offline, "--output-dir", str(tmp / "from-wandb"), "--wandb-mode", "disabled"]
    both = [str(run), *offline[1:], "--output-dir", str(tmp / "both"), "--wandb-mode", "disabled"]  # read twice
    cases = [("eval_linear.py", linear), ("eval_svm.py", svm), ("report.py", [str(run)]), ("report.py", from_wandb)]
    cases.append(("report.py", both))
    for result in run_in_one_process(cases, tmp):
        assert result["code"] == 0, result["stderr"]
    return tmp, run


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def results_of(run: Path, kind: str) -> dict:
    return json.loads((run / kind / "results.json").read_text())


def short(sha: str) -> str:
    return f"sha256:{sha[:12]}"


def markdown_row(markdown: str, section: str, first_cells: list[str]) -> dict[str, str]:
    """The cells, by column, of the row that starts with these cells in the Markdown table under `### <section>`."""
    (text,) = [part for part in markdown.split("\n### ") if part.startswith(section)]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    (row,) = [r for r in rows if r[: len(first_cells)] == first_cells]
    return dict(zip(rows[0], row, strict=True))


def check_table(run: Path, kind: str, csv_name: str, keys: dict, markdown: str, section: str) -> None:
    """Every number of every network's row (pretrained, random init both ways, pixels), and of the gain rows under
    them, equals results.json (CSV exactly, Markdown to 2 decimals), with its bootstrap interval, beside the hash of
    the weights that produced it."""
    results = results_of(run, kind)
    rows = read_csv(run / "report" / csv_name)
    assert set(results["identities"]) == set(NETWORK_PREFIXES)  # --baseline all: every baseline
    networks = list(NETWORK_PREFIXES.items())
    for model, prefix in [*networks, ("gain", ""), ("gain_pixels", "")]:
        if model.startswith("gain"):
            weights = "-"
            (row,) = [r for r in rows if r["Model"] == (GAIN_LABEL if model == "gain" else PIXEL_GAIN_LABEL)]
        else:
            weights = "no network" if model == "pixels" else short(results["identities"][model]["sha256"])
            row = next(r for r in rows if r["Weights"] == weights)
        md = markdown_row(markdown, section, [row["Model"], weights])
        for column, key in keys.items():
            name = prefix + key + (f"_{model}" if model.startswith("gain") else "")
            if name not in results:  # low-shot: no test-image interval, no gain; the pixels: no multi-head taps
                assert row[column] == "" and md[column] == "-", (model, column)
                assert model.startswith("gain") or model == "pixels", (model, column)
                continue
            assert float(row[column]) == results[name], (model, column)
            interval = results.get(f"{name}_ci95")
            text = f"{results[name]:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
            assert md[column] == text
            if interval:
                assert [float(row[f"{column} 95% low"]), float(row[f"{column} 95% high"])] == interval


def test_tables_match_results_json(reported):
    _, run = reported
    markdown = (run / "report" / "report.md").read_text()
    check_table(run, "linear", "linear_tiny_split0.csv", LINEAR_KEYS, markdown, "Linear evaluation on tiny_split0")
    check_table(run, "svm", "svm.csv", SVM_KEYS, markdown, "VOC SVM / Low-shot SVM")
    assert read_csv(run / "report" / "svm.csv")[0]["Best Layer"] == results_of(run, "svm")["best_layer"]
    evolution = read_csv(run / "report" / "cluster_evolution.csv")  # assignments/epoch_0000.npy .. the final 0002
    assert [row["Epoch"] for row in evolution] == ["0", "1", "2"] and 0 <= float(evolution[1]["Jaccard median"]) <= 1
    assert f"evolution_{run.name}.png" in markdown and (run / "report" / f"evolution_{run.name}.png").is_file()
    assert "### Embedding map" in markdown and "maps/tsne_epoch_0002.png" in markdown  # the final network's map
    # kNN: eval_linear's, and the run's monitor (final network and its floor) from log.jsonl
    knn = read_csv(run / "report" / "knn.csv")
    results = results_of(run, "linear")
    (row,) = [r for r in knn if r["Measured by"] == "eval_linear.py" and r["Model"] == "run"]
    assert float(row["Top-1"]) == results["knn_top1"] and row["Weights"] == short(
        results["identities"]["pretrained"]["sha256"]
    )
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (final,) = [r for r in knn if r["Measured by"].startswith("monitor, final")]
    assert float(final["Top-1"]) == records[-1]["knn_top1"]
    floors = {r["Model"]: float(r["Top-1"]) for r in knn if r["Measured by"] == "monitor, epoch 0"}
    assert floors == {
        "random init (the run's floor: higher BatchNorm statistics)": records[0]["knn_floor_random"],
        "pixels (the run's floor: higher view)": records[0]["knn_floor_pixels"],
    }
    # the checkpoint the evaluations read is the run's: its rows are labelled with the run's name
    assert final["Weights"] == row["Weights"]
    # no semi-supervised evaluation: no table of `missing` rows; published rows (ImageNet, VOC2007) only beside runs
    # on the same dataset, so none here
    assert not (run / "report" / "semisup.csv").exists() and "Semi-supervised" not in markdown
    assert not [r for r in read_csv(run / "report" / "svm.csv") if "published" in r["Model"]]
    for name in ("curves.png", "cluster_sizes.png", "per_layer.png", "lowshot.png"):
        with Image.open(run / "report" / name) as image:
            assert image.size[0] > 100


def test_tsne_maps_of_any_measured_epoch(reported):
    """Training drew the maps of epoch 0 and of the final network (--tsne-every 10) and kept the map points of every
    measured epoch: report.py --tsne draws epoch 1 from them; an epoch never measured is one line."""
    from util.pretrain.maps import MAP_POINTS, load_points, saved_map_epochs

    tmp, run = reported
    assert saved_map_epochs(run) == [0, 1, 2] and not (run / "maps" / "tsne_epoch_0001.png").exists()
    points, labels, names = load_points(run, 1)
    assert names == [f"class_{c:02d}" for c in range(4)]  # the class folders, for the map's legend
    assert points.dtype == np.float16 and len(points) == len(labels) == min(MAP_POINTS, 4 * 15)
    assert np.bincount(labels).tolist() == [15] * 4  # every held-out image (4 classes x 15) once, with its label
    flags = ["--wandb-mode", "disabled", "--output-dir", str(tmp / "maps-report"), "--tsne"]
    good, bad = run_in_one_process(
        [("report.py", [str(run), *flags, "1"]), ("report.py", [str(run), *flags, "7"])], tmp
    )
    assert good["code"] == 0, good["stderr"]
    with Image.open(run / "maps" / "tsne_epoch_0001.png") as image:
        assert image.size[0] > 300
    assert "maps/tsne_epoch_0001.png" in (tmp / "maps-report" / "report.md").read_text()
    assert bad["code"] == 2 and "no saved map points for epoch(s) [7]" in bad["stderr"]
    assert len(bad["stderr"].strip().splitlines()) == 1


def test_least_stable_clusters_with_thumbnails(reported):
    """The report's least stable clusters are those of the saved assignments of the last measured network (the final
    one, after 2 epochs) against the epoch before, each with a strip of its own images; the W&B table holds them as
    images."""
    from util.report.evolution import Overlaps, least_stable

    _, run = reported
    rows = read_csv(run / "report" / "unstable_clusters.csv")
    before, after = (np.load(run / "assignments" / f"epoch_{e:04d}.npy") for e in (1, 2))
    expected = least_stable(Overlaps.of(before, after), 8)
    assert [(int(r["Cluster"]), int(r["Images"]), int(r["Best match"])) for r in rows] == [
        (u.cluster, u.size, u.match) for u in expected
    ]
    assert [float(r["Best Jaccard"]) for r in rows] == [u.jaccard for u in expected]
    for row in rows:
        with Image.open(run / "report" / row["Thumbnails"]) as image:
            assert image.size == (64 * 8, 64)
    assert (
        "!["
        in markdown_row(
            (run / "report" / "report.md").read_text(),
            "Least stable",
            [rows[0][c] for c in ("Run", "Epoch", "Cluster")],
        )["Thumbnails"]
    )
    # W&B keeps a table of images as a run_table artifact holding the table and every image
    records = wandb_records(wandb_run_dir(run / "report"))
    (artifact,) = [
        r["artifact"] for r in records if r.get("type") == "artifact" and "unstable_clusters" in r["artifact"]["name"]
    ]
    paths = [entry["path"] for entry in artifact["manifest"]["contents"]]
    assert artifact["type"] == "run_table" and any(p.endswith("unstable_clusters.table.json") for p in paths)
    assert len([p for p in paths if p.startswith("media/images/") and p.endswith(".png")]) == len(rows)


def test_evaluations_join_the_pretraining_group_and_use_its_checkpoint_artifact(reported):
    _, run = reported
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=False)
    group = checkpoint["wandb_group"]
    assert group == f"run-{checkpoint['wandb_run_id']}"
    pretrain = wandb_records(wandb_run_dir(run))
    (meta,) = [r["run"] for r in pretrain if r.get("type") == "run"]
    assert meta["run_group"] == group and meta["job_type"] == "pretrain"
    logged = [r["artifact"] for r in pretrain if r.get("type") == "artifact"]
    (epoch2,) = [a for a in logged if "epoch-2" in a["aliases"]]
    assert epoch2["name"] == f"checkpoint-{checkpoint['wandb_run_id']}" and "latest" in epoch2["aliases"]
    for kind, job in (("linear", "linear"), ("svm", "svm")):
        records = wandb_records(wandb_run_dir(run / kind))
        (meta,) = [r["run"] for r in records if r.get("type") == "run"]
        assert meta["run_group"] == group and meta["job_type"] == job
        (used,) = [
            r["artifact"] for r in records if r.get("type") == "artifact" and r["artifact"].get("use_after_commit")
        ]
        assert used["digest"] == epoch2["digest"] and used["name"] == epoch2["name"]  # the same checkpoint version
        summary = wandb_summary(wandb_run_dir(run / kind))
        results = results_of(run, kind)
        key = "knn_top1" if kind == "linear" else "best_map"
        assert summary["summary"][key] == results[key]
        assert summary["summary"]["identity/pretrained"] == f"sha256:{results['identities']['pretrained']['sha256']}"
        assert summary["config"]["pretrain_artifact"] == f"{epoch2['name']}:epoch-2"


def test_report_wandb_run_holds_the_same_tables(reported):
    _, run = reported
    report_run = wandb_run_dir(run / "report")
    records = wandb_records(report_run)
    (meta,) = [r["run"] for r in records if r.get("type") == "run"]
    assert (
        meta["job_type"] == "report"
        and meta["run_group"] == torch.load(run / "checkpoint.pth", weights_only=False)["wandb_group"]
    )
    for name in ("svm", "linear_tiny_split0", "knn", "cluster_evolution"):
        (table_file,) = (report_run / "files" / "media" / "table" / "report").glob(f"{name}_*.table.json")
        table = json.loads(table_file.read_text())
        rows = read_csv(run / "report" / f"{name}.csv")
        assert table["columns"] == list(rows[0])[:-1]
        for logged, written in zip(table["data"], rows, strict=True):
            for value, column in zip(logged, table["columns"], strict=True):
                expected = written[column]
                assert (value is None and expected == "") or str(value) == expected or float(value) == float(expected)
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    images = {k.split(".")[0] for item in history for k in item if k.endswith("._type")}
    assert {"report/curves", "report/lowshot", "report/per_layer", "report/cluster_sizes"} <= images


def test_report_from_offline_wandb_runs_equals_the_folder_report(reported):
    tmp, run = reported
    from_wandb = tmp / "from-wandb"
    for name, keys in (("linear_tiny_split0.csv", LINEAR_KEYS), ("svm.csv", SVM_KEYS)):
        networks = ("sha256", "no network")  # the pretrained network, random init both ways; the pixels
        from_folder = {r["Weights"]: r for r in read_csv(run / "report" / name) if r["Weights"].startswith(networks)}
        wandb_rows = {r["Weights"]: r for r in read_csv(from_wandb / name) if r["Weights"].startswith(networks)}
        assert from_folder.keys() == wandb_rows.keys() and len(from_folder) == 4
        for weights, row in from_folder.items():
            assert [row[c] for c in keys] == [wandb_rows[weights][c] for c in keys]
            intervals = [c for c in row if c.endswith(("95% low", "95% high"))]  # from the W&B summary's _low/_high
            assert intervals and [row[c] for c in intervals] == [wandb_rows[weights][c] for c in intervals]
    # the run's W&B history holds a row per epoch plus the cluster image of epoch 1: still 2 epochs, then the final
    assert "**run-" not in (from_wandb / "report.md").read_text()
    assert "2 epochs trained (finished)" in (from_wandb / "report.md").read_text()
    wandb_knn = read_csv(from_wandb / "knn.csv")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (final,) = [r for r in wandb_knn if r["Measured by"].startswith("monitor, final")]
    assert float(final["Top-1"]) == records[-1]["knn_top1"]


def test_an_evaluation_read_from_its_folder_and_its_wandb_run_counts_once(reported):
    tmp, run = reported
    for name in ("linear_tiny_split0.csv", "svm.csv"):
        models = [r["Model"] for r in read_csv(tmp / "both" / name)]
        assert models == [r["Model"] for r in read_csv(run / "report" / name)]
        assert models.count(GAIN_LABEL) == 1 and models.count("random init") == 1


def test_cluster_images_during_training_and_on_a_finished_run(reported):
    tmp, run = reported
    """Every --cluster-images-every epochs (here 1) and the final network's: epochs 1 and 2, not the random one."""
    assert (run / "clusters" / "epoch_0001.png").is_file() and (run / "clusters" / "epoch_0002.png").is_file()
    assert not (run / "clusters" / "epoch_0000.png").exists()
    history = [r["history"]["item"] for r in wandb_records(wandb_run_dir(run)) if r.get("type") == "history"]
    assert [item["epoch"] for item in history if "cluster/images._type" in item] == [1, 2]
    flags = ["--wandb-mode", "disabled", "--output-dir", str(tmp / "grids"), "--cluster-images"]
    good, bad = run_in_one_process(
        [("report.py", [str(run), *flags, "0"]), ("report.py", [str(run), *flags, "7"])], tmp
    )
    assert good["code"] == 0, good["stderr"]
    with Image.open(run / "clusters" / "epoch_0000.png") as image:
        assert image.size[0] > 300
    assert bad["code"] == 2 and "no saved assignments for epoch(s) [7]" in bad["stderr"]
    assert len(bad["stderr"].strip().splitlines()) == 1


def test_choose_clusters_against_a_plain_reference():
    rng = np.random.default_rng(3)
    assignments = rng.integers(0, 12, size=500)
    assignments[assignments == 5] = 4  # an empty cluster
    assignments[:20] = -100  # not clustered (DeepCluster-v2)
    rows = choose_clusters(assignments, per_cluster=8, num_random=3, rng=np.random.default_rng(0))
    sizes = {c: int(np.sum(assignments == c)) for c in set(assignments.tolist()) if c >= 0}
    order = sorted(sizes, key=lambda c: (-sizes[c], c))
    assert [(r.role, r.cluster) for r in rows[:3]] == [
        ("largest", order[0]),
        ("median", order[len(order) // 2]),
        ("smallest", order[-1]),
    ]
    assert [r.role for r in rows[3:]] == ["random"] * 3 and len({r.cluster for r in rows}) == 6
    for row in rows:
        assert row.size == sizes[row.cluster] and len(row.members) == min(8, row.size)
        assert np.all(assignments[row.members] == row.cluster) and len(set(row.members.tolist())) == len(row.members)
    again = choose_clusters(assignments, per_cluster=8, num_random=3, rng=np.random.default_rng(0))
    assert [(r.cluster, r.members.tolist()) for r in again] == [(r.cluster, r.members.tolist()) for r in rows]


def test_history_records_and_resumed_offline_runs_merge():
    history = [
        {"epoch": 0, "train/loss": 3.0, "monitor/knn_top1": 40.0, "cluster/size_histogram._type": "histogram"},
        {"epoch": 1, "train/loss": 2.5},
        {"epoch": 1, "cluster/images._type": "image-file"},  # an image logged at the epoch: no record
        {"epoch": 2, "cluster/nmi_labels": 0.1},  # the old last network, measured again after a resume
        {"epoch": 2, "train/loss": 2.4, "cluster/nmi_labels": 0.2},
        {"epoch": 3, "cluster/nmi_labels": 0.3},
    ]
    records = history_records(history, final_epoch=3)
    assert records == [
        {"epoch": 0, "loss": 3.0, "knn_top1": 40.0},
        {"epoch": 1, "loss": 2.5},
        {"epoch": 2, "loss": 2.4, "nmi_labels": 0.2},
        {"epoch": 3, "nmi_labels": 0.3, "final": True},
    ]
    first = PretrainRun("a", "w1", records[:2], None, {}, "g", "id1")
    second = PretrainRun("a", "w2", records[2:], None, {}, "g", "id1")
    other = PretrainRun("b", "w3", records[:1], None, {}, "g", "id2")
    merged = merge_runs([first, second, other])
    assert [r.run_id for r in merged] == ["id1", "id2"] and merged[0].records == records
