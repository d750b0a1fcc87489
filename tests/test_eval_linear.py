"""eval_linear.py: probes on tiny generated data, strict loads, frozen backbone, resume, W&B table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
import torchvision

from tests.helpers import PYTHON, REPO, random_resnet18, run_script, script_env, wandb_records, wandb_run_dir
from util.augment import augment_preset
from util.data import build_source
from util.eval.pretrained import NETWORK_PREFIXES, RANDOM_NETWORKS, load_backbone
from util.eval.probe_features import LiveFeatures
from util.eval.probes import build_tap_pooling

pytestmark = pytest.mark.slow

FAST = ["--batch-size", "32", "--workers", "0", "--image-size", "32", "--seed", "0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_folder):
    """A real main_deepcluster.py checkpoint (1 epoch on the tiny folder)."""
    tmp = tmp_path_factory.mktemp("pre")
    args = [
        "--data",
        str(tiny_folder),
        "--output-dir",
        str(tmp / "run"),
        *"--arch resnet18 --k 6 --pca-dim 16 --batch-size 16 --reassign 1 --epochs 1 --workers 0".split(),
    ]
    proc = run_script("main_deepcluster.py", args, tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run" / "checkpoint.pth"


def run_eval_linear(tmp_path, *args, **kwargs):
    return run_script("eval_linear.py", [*FAST, *args], tmp_path, **kwargs)


def test_all_protocols_cached_with_random_baseline(tmp_path, tiny_split_folder, checkpoint):
    out = tmp_path / "eval"
    proc = run_eval_linear(
        tmp_path,
        "--pretrained",
        str(checkpoint),
        "--data",
        str(tiny_split_folder),
        "--epochs",
        "3",
        "--cached-features",
        "--output-dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    every = [f"feature{i}_top1" for i in range(1, 6)] + ["avgpool_top1", "knn_top1", "knn_top5"]
    for network, prefix in NETWORK_PREFIXES.items():
        for key in every if network != "pixels" else ["avgpool_top1", "knn_top1", "knn_top5"]:  # no taps
            assert 0 <= results[prefix + key] <= 100, prefix + key
    assert "pixels_feature1_top1" not in results and results["pixels_knn_view"] in ("input", "centred")
    assert results["arch"] == "resnet18" and results["cached_features"] is True
    assert "Feature1" in proc.stderr and "random init, BatchNorm recomputed" in proc.stderr  # the console table
    tables = [r for r in wandb_records(wandb_run_dir(out)) if "linear_eval" in json.dumps(r)]
    assert tables, "the W&B run holds the linear_eval table"
    # The W&B table file, read back from the offline run: every cell equals results.json.
    (table_file,) = (wandb_run_dir(out) / "files").rglob("linear_eval*.table.json")
    table = json.loads(table_file.read_text())
    keys = [f"feature{i}_top1" for i in range(1, 6)] + ["avgpool_top1", "knn_top1"]
    *networks, gains, pixel_gains = table["data"]
    assert [row[0] for row in networks[1:]] == ["random init", "random init, BatchNorm recomputed", "pixels"]
    for row, (network, prefix) in zip(networks, NETWORK_PREFIXES.items(), strict=True):
        weights = "no network" if network == "pixels" else f"sha256:{results['identities'][network]['sha256'][:12]}"
        assert row[1] == weights
        assert row[3:] == [results.get(prefix + key) for key in keys]
    assert gains[0].startswith("gain over random init") and gains[3:] == [results[f"{key}_gain"] for key in keys]
    assert pixel_gains[0] == "gain over the pixels"
    assert pixel_gains[3:] == [results.get(f"{key}_gain_pixels") for key in keys]
    # the bootstrap over the validation images: an interval per number, a paired interval per gain
    for key in keys:
        randoms = {network: results[NETWORK_PREFIXES[network] + key] for network in RANDOM_NETWORKS}
        higher = max(randoms, key=randoms.get)  # the first of equals: BatchNorm's initial statistics
        assert results[f"{key}_gain_over"] == higher and results[f"{key}_gain"] == results[key] - randoms[higher]
        for name in (key, *(NETWORK_PREFIXES[n] + key for n in RANDOM_NETWORKS), f"{key}_gain"):
            low, high = results[f"{name}_ci95"]
            assert low <= high and (-100 <= low <= 100 if name.endswith("gain") else 0 <= low <= 100 and high <= 100)
    for key in ("avgpool_top1", "knn_top1"):
        assert results[f"{key}_gain_pixels"] == results[key] - results[f"pixels_{key}"]
    assert results["bootstrap"]["resamples"] == 1000 and "95 % CI" in proc.stderr
    # the kept hits are those of the reported numbers: the last epoch, AvgPool's best (the first of equals), kNN
    state = torch.load(out / "linear_state.pth", weights_only=False)
    assert len(state["tasks"]) == 3 * 3 + 2  # three networks x three protocols; the pixels: AvgPool and kNN
    for task in state["tasks"].values():
        prefix = NETWORK_PREFIXES[task["name"].split("/")[0]]
        found = task["results"]
        for key, hits in found["per_image"]["hits"].items():
            if hits.ndim == 2:  # AvgPool: every epoch, the reported one the first with the most top-1 hits
                best = int(np.argmax(found["per_image"]["hits"]["avgpool_top1"].sum(1)))
                assert best == found["avgpool_best_epoch"]
                hits = hits[best]
            share = np.float32(hits.sum()) / np.float32(hits.size)  # as torch's float32 mean computes it
            assert 100.0 * float(share) == results[prefix + key], (prefix, key)
    assert any("--cached-features" in note for note in results["protocol_notes"])


def test_avgpool_keeps_every_epochs_hits_across_a_resume(tmp_path, tiny_split_folder, checkpoint, monkeypatch):
    """AvgPool reports its best epoch, so the bootstrap needs every epoch's per-image hits: those of the epochs before
    a kill come back from the state file. probe_accuracy is wrapped to stamp each epoch's hits (the epoch's own
    permutation of the real ones) and to die in epoch 2; the resumed task returns the stamps of epochs 0..3 in order."""
    from argparse import Namespace
    from dataclasses import replace

    import eval_linear
    from util.eval.probe_features import CachedFeatures
    from util.eval.state import EvalState
    from util.tracking import Tracker

    device = torch.device("cpu")
    torch.manual_seed(0)
    backbone = load_backbone(str(checkpoint), None, None, device)
    spec = augment_preset("linear", 32)
    train = build_source(str(tiny_split_folder), "train", 32, spec, None, True, 0, tiny_split_folder)
    val = build_source(str(tiny_split_folder), "val", 32, spec, None, True, 0, tiny_split_folder)
    pooling = build_tap_pooling(backbone, "resnet18", 32, device)
    features = CachedFeatures(backbone, pooling, train, val, 32, device, 0, False)
    task = eval_linear.Task("pretrained", str(checkpoint), "avgpool", key="k")
    hp = replace(eval_linear.PROTOCOL_DEFAULTS["avgpool"], epochs=4, milestones=(0.5, 0.75))
    args = Namespace(momentum=0.9)
    real, stamps, killed = eval_linear.probe_accuracy, [], []

    def stamped(task_, probe, features_):
        accuracy, hits = real(task_, probe, features_)
        epoch = len(stamps)
        order = np.random.default_rng(epoch).permutation(len(hits["avgpool_top1"]))
        stamps.append({key: hit[order] for key, hit in hits.items()})
        if epoch == 2 and not killed:
            killed.append(epoch)
            raise RuntimeError("killed in epoch 2")
        return accuracy, stamps[-1]

    monkeypatch.setattr(eval_linear, "probe_accuracy", stamped)
    state = EvalState(tmp_path / "state.pth")
    with pytest.raises(RuntimeError, match="killed"):
        eval_linear.train_probe(task, hp, args, features, 4, device, state, Tracker(None))
    stamps.pop()  # the killed epoch's stamp: epoch 2 runs again
    resumed = EvalState.load(tmp_path / "state.pth")
    assert resumed.current["epoch"] == 2
    found = eval_linear.train_probe(task, hp, args, features, 4, device, resumed, Tracker(None))
    kept = found["per_image"]
    assert kept["select"] == "avgpool_top1" and len(stamps) == 4
    for key in ("avgpool_top1", "avgpool_top5"):
        assert np.array_equal(kept["hits"][key], np.stack([stamp[key] for stamp in stamps]))


def test_probe_learns_on_separable_images(tmp_path, tiny_split_folder):
    """Live protocol path (augmented crops through the frozen net): far above the 25 % chance level."""
    out = tmp_path / "eval"
    proc = run_eval_linear(
        tmp_path,
        *random_resnet18(tiny_split_folder),
        "--protocol",
        "multihead",
        "--epochs",
        "6",
        "--lr",
        "0.05",
        "--output-dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert max(results[f"random_init_feature{i}_top1"] for i in range(1, 6)) >= 75.0


def test_backbone_stays_frozen(tiny_split_folder, checkpoint):
    device = torch.device("cpu")
    backbone = load_backbone(str(checkpoint), None, None, device)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    spec = augment_preset("paper", 32)
    train = build_source(str(tiny_split_folder), "train", 32, spec, None, True, 0, tiny_split_folder)
    val = build_source(str(tiny_split_folder), "val", 32, spec, None, True, 0, tiny_split_folder)
    features = LiveFeatures(backbone, build_tap_pooling(backbone, "resnet18", 32, device), train, val, 32, device, 0)
    from eval_linear import Task, build_probe, probe_epoch

    task = Task("pretrained", str(checkpoint), "multihead")
    probe = build_probe(task, features, 4, device)
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.1)
    probe_epoch(task, probe, optimizer, features.train_epoch(0))
    after = backbone.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # weights and BN running statistics untouched
    assert not backbone.training


def test_interrupted_evaluation_resumes_to_the_same_numbers(tmp_path, tiny_split_folder, checkpoint):
    common = [
        "--pretrained",
        str(checkpoint),
        "--data",
        str(tiny_split_folder),
        *"--protocol multihead --epochs 8 --cached-features --baseline none --deterministic".split(),
    ]
    ref = tmp_path / "ref"
    assert run_eval_linear(tmp_path, *common, "--output-dir", str(ref)).returncode == 0
    out = tmp_path / "killed"
    cmd = [PYTHON, str(REPO / "eval_linear.py"), *FAST, *common, "--output-dir", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=script_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        state_file = out / "linear_state.pth"
        if state_file.exists():
            try:
                current = torch.load(state_file, weights_only=False)["current"]
            except Exception:  # noqa: BLE001 - a concurrent rename; try again
                current = None
            if current and current["epoch"] >= 2:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists(), "the kill must land before the evaluation ends"
    again = run_eval_linear(tmp_path, *common, "--output-dir", str(out))
    assert again.returncode == 0, again.stderr
    assert "resumed pretrained/multihead at epoch" in again.stderr
    ref_results = json.loads((ref / "results.json").read_text())
    new_results = json.loads((out / "results.json").read_text())
    for i in range(1, 6):
        assert new_results[f"feature{i}_top1"] == pytest.approx(ref_results[f"feature{i}_top1"])
        # the per-image hits of the last epoch survive the kill: the same bootstrap intervals
        assert new_results[f"feature{i}_top1_ci95"] == ref_results[f"feature{i}_top1_ci95"]


def test_torchvision_state_dict_loads_and_drops_the_classifier(tmp_path, tiny_split_folder):
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    proc = run_eval_linear(
        tmp_path,
        "--pretrained",
        str(path),
        "--arch",
        "resnet18",
        "--data",
        str(tiny_split_folder),
        "--protocol",
        "knn",
        "--baseline",
        "none",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "tv.pth: torchvision layout" in proc.stderr and "2 dropped (fc.* (2))" in proc.stderr


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing", "does not exist"),
        ("other_arch", "is a resnet18 network, not --arch resnet50"),
        ("plain_no_arch", "pass its --arch"),
        ("bad_keys", "unexpected keys extra.weight"),
        ("no_val", "needs train/ and val/"),
    ],
)
def test_bad_inputs(tmp_path, tiny_split_folder, tiny_folder, checkpoint, case, fragment):
    data, args = str(tiny_split_folder), []
    if case == "missing":
        args = ["--pretrained", str(tmp_path / "nope.pth")]
    elif case == "other_arch":
        args = ["--pretrained", str(checkpoint), "--arch", "resnet50"]
    elif case == "plain_no_arch":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
        args = ["--pretrained", str(tmp_path / "tv.pth")]
    elif case == "bad_keys":
        state = torchvision.models.resnet18(weights=None).state_dict()
        state["extra.weight"] = torch.zeros(1)
        torch.save(state, tmp_path / "tv.pth")
        args = ["--pretrained", str(tmp_path / "tv.pth"), "--arch", "resnet18"]
    else:
        data, args = str(tiny_folder.parent), ["--pretrained", str(checkpoint)]
    proc = run_eval_linear(tmp_path, *args, "--data", data, "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert not np.any([p.name == "results.json" for p in (tmp_path / "o").glob("*")])


def test_one_folder_never_reports_another_networks_numbers(tmp_path, tiny_split_folder, checkpoint):
    """A, then `random`, then B into one output folder: each run reports only its own weights' numbers, each
    row names the weights' hash, and coming back to A reuses A's results (same weights, same flags)."""
    out = tmp_path / "eval"
    common = ["--data", str(tiny_split_folder), "--protocol", "knn", "--output-dir", str(out)]
    first = run_eval_linear(tmp_path, "--pretrained", str(checkpoint), "--baseline", "none", *common)
    assert first.returncode == 0, first.stderr
    a_results = json.loads((out / "results.json").read_text())
    a_hash = a_results["identities"]["pretrained"]["sha256"]
    assert f"sha256:{a_hash[:12]}" in first.stderr

    rand = run_eval_linear(tmp_path, "--pretrained", "random", "--arch", "resnet18", "--baseline", "none", *common)
    assert rand.returncode == 0, rand.stderr
    r_results = json.loads((out / "results.json").read_text())
    assert "knn_top1" not in r_results and set(r_results["identities"]) == {"random_init"}
    assert "reusing" not in rand.stderr and "pretrained (" not in rand.stderr
    assert r_results["identities"]["random_init"]["sha256"] != a_hash
    # The baseline row beside A is this same random network (same seed): the same weights and the same number.
    beside = tmp_path / "beside"
    assert run_eval_linear(tmp_path, "--pretrained", str(checkpoint), *common[:-1], str(beside)).returncode == 0
    with_baseline = json.loads((beside / "results.json").read_text())
    assert with_baseline["identities"]["random_init"] == r_results["identities"]["random_init"]
    assert with_baseline["random_init_knn_top1"] == r_results["random_init_knn_top1"]

    other = tmp_path / "b.pth"  # B: other weights of the same arch (a torchvision-format state dict)
    torch.manual_seed(5)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    b = run_eval_linear(tmp_path, "--pretrained", str(other), "--arch", "resnet18", "--baseline", "none", *common)
    assert b.returncode == 0, b.stderr
    b_results = json.loads((out / "results.json").read_text())
    assert "reusing" not in b.stderr and b_results["identities"]["pretrained"]["sha256"] != a_hash

    again = run_eval_linear(tmp_path, "--pretrained", str(checkpoint), "--baseline", "none", *common)
    assert again.returncode == 0 and "reusing results of the same weights" in again.stderr
    assert json.loads((out / "results.json").read_text())["knn_top1"] == a_results["knn_top1"]


def test_knn_equals_an_independent_computation_on_the_features(tiny_split_folder, checkpoint):
    """eval_linear's kNN (util/knn.py) against scikit-learn's cosine neighbours + the weighted vote on the same
    AvgPool features."""
    from sklearn.neighbors import NearestNeighbors

    from util.knn import knn_predict

    device = torch.device("cpu")
    backbone = load_backbone(str(checkpoint), None, None, device)
    pooling = build_tap_pooling(backbone, "resnet18", 32, device)
    spec = augment_preset("paper", 32)
    sources = [
        build_source(str(tiny_split_folder), split, 32, spec, None, False, 0, tiny_split_folder)
        for split in ("train", "val")
    ]
    features = LiveFeatures(backbone, pooling, sources[0], sources[1], 32, device, seed=0)
    (train, train_y), val = features.avgpool_features("train"), features.avgpool_features("val")[0]
    scores = knn_predict(train, train_y, val, 4, k=20, temperature=0.07).numpy()
    train_n = (train / train.norm(dim=1, keepdim=True)).double().numpy()
    val_n = (val / val.norm(dim=1, keepdim=True)).double().numpy()
    distances, neighbours = NearestNeighbors(n_neighbors=20, metric="cosine").fit(train_n).kneighbors(val_n)
    reference = np.zeros((len(val_n), 4))
    for row in range(len(val_n)):
        np.add.at(reference[row], train_y.numpy()[neighbours[row]], np.exp((1 - distances[row]) / 0.07))
    np.testing.assert_allclose(scores, reference, rtol=1e-4)


@pytest.mark.parametrize(
    ("schedule", "epochs", "steps"),
    [("imagenet", 90, [30, 60]), ("places205", 28, [7, 14, 21]), ("inat18", 84, [24, 48, 72])],
)
def test_multihead_schedule_presets(schedule, epochs, steps):
    import eval_linear

    args = eval_linear.get_args_parser().parse_args(
        ["--pretrained", "random", "--schedule", schedule, "--output-dir", "o"]
    )
    hp = eval_linear.protocol_hyperparameters(args, "multihead")
    assert hp.epochs == epochs and [round(f * epochs) for f in hp.milestones] == steps
