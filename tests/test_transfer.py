"""Weight export (torchvision, detectron2, mmdet), torch.hub entry points, and sweep_best.py."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch
import torchvision

from models import build_model
from tests.helpers import REPO, run_script


def our_checkpoint(path, arch="resnet50", sobel=False, seed=0):
    """A checkpoint in main_deepcluster.py's layout, with non-default weights (BatchNorm statistics included)."""
    torch.manual_seed(seed)
    model = build_model(arch, sobel)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))  # running_var stays positive
    torch.save({"backbone": model.state_dict(), "arch": arch, "sobel": sobel, "head": {"weight": torch.zeros(3)}}, path)
    return model.state_dict()


def reference_detectron2_keys(state: dict) -> dict[str, str]:
    """detectron2's torchvision -> detectron2 renaming, written out independently of util/eval/export.py from the rules
    in detectron2's tools/convert-torchvision-to-d2.py: the stem (conv1, bn1 -> stem.conv1, stem.conv1.norm), stage
    layerN -> resN+1, in a block bnK -> convK.norm, downsample.0 / .1 -> shortcut / shortcut.norm."""
    out = {}
    for key in state:
        stem = re.fullmatch(r"(conv1|bn1)\.(\w+)", key)
        if stem:
            out[key] = "stem.conv1." + stem[2] if stem[1] == "conv1" else "stem.conv1.norm." + stem[2]
            continue
        stage, block, rest = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key).groups()
        conv = re.fullmatch(r"(conv|bn)(\d)\.(\w+)", rest)
        if conv:
            rest = f"conv{conv[2]}.{conv[3]}" if conv[1] == "conv" else f"conv{conv[2]}.norm.{conv[3]}"
        else:
            index, param = re.fullmatch(r"downsample\.(\d)\.(\w+)", rest).groups()
            rest = f"shortcut.{param}" if index == "0" else f"shortcut.norm.{param}"
        out[key] = f"res{int(stage) + 1}.{block}.{rest}"
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    state = our_checkpoint(tmp / "ckpt.pth")
    args = ["--pretrained", str(tmp / "ckpt.pth"), "--output-dir", str(tmp / "out")]
    proc = run_script("export_weights.py", args, tmp)
    assert proc.returncode == 0, proc.stderr
    assert "head is not part of the backbone: not exported" in proc.stderr
    return tmp, state


def test_torchvision_export_loads_strictly_into_torchvision_models(exported):
    tmp, state = exported
    weights = torch.load(tmp / "out" / "backbone_torchvision.pth", weights_only=True)
    resnet = torchvision.models.resnet50()
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict(weights, strict=True)
    for name, tensor in resnet.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    # the detection and segmentation models' backbones (torchvision's own transfer models)
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    detector.backbone.body.load_state_dict(weights, strict=True)
    for segmenter in (torchvision.models.segmentation.fcn_resnet50, torchvision.models.segmentation.deeplabv3_resnet50):
        segmenter(weights=None, weights_backbone=None, num_classes=21).backbone.load_state_dict(weights, strict=True)
    # mmdetection / mmsegmentation: torchvision's names under state_dict, with the provenance in meta
    mm = torch.load(tmp / "out" / "backbone_mmdet.pth", weights_only=False)
    resnet.load_state_dict(mm["state_dict"], strict=True)
    record = json.loads((tmp / "out" / "export.json").read_text())
    assert mm["meta"]["sha256"] == record["sha256"] and record["arch"] == "resnet50"


def test_detectron2_export_has_the_converters_key_set_and_values(exported):
    tmp, state = exported
    with open(tmp / "out" / "backbone_detectron2.pkl", "rb") as handle:
        d2 = pickle.load(handle)
    assert d2["matching_heuristics"] is True
    torchvision_keys = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    expected = reference_detectron2_keys(torchvision_keys)
    assert set(d2["model"]) == set(expected.values())
    for ours, theirs in expected.items():
        assert isinstance(d2["model"][theirs], np.ndarray)
        np.testing.assert_array_equal(d2["model"][theirs], state[ours].numpy())


def test_export_refuses_what_the_formats_cannot_hold_and_never_overwrites(exported, tmp_path):
    tmp, _ = exported
    our_checkpoint(tmp_path / "sobel.pth", arch="resnet18", sobel=True)
    our_checkpoint(tmp_path / "cifar.pth", arch="resnet18_cifar")
    for name, words in (("sobel.pth", "Sobel front end"), ("cifar.pth", "not --arch resnet18_cifar")):
        proc = run_script(
            "export_weights.py", ["--pretrained", str(tmp_path / name), "--output-dir", str(tmp_path / "x")], tmp_path
        )
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()
    target = tmp / "out" / "backbone_torchvision.pth"
    before = target.read_bytes()
    our_checkpoint(tmp_path / "other.pth", seed=1)
    args = ["--pretrained", str(tmp_path / "other.pth"), "--output-dir", str(tmp / "out"), "--format", "torchvision"]
    proc = run_script("export_weights.py", args, tmp_path)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert target.read_bytes() == before
    assert run_script("export_weights.py", [*args, "--overwrite"], tmp_path).returncode == 0
    assert target.read_bytes() != before


def test_export_from_a_torchvision_state_dict(tmp_path):
    """Supervised torchvision weights (the reference row's network) go through the same path: fc dropped."""
    torch.manual_seed(3)
    source = torchvision.models.resnet18().state_dict()
    torch.save(source, tmp_path / "tv.pth")
    args = ["--pretrained", str(tmp_path / "tv.pth"), "--arch", "resnet18", "--output-dir", str(tmp_path / "out")]
    proc = run_script("export_weights.py", [*args, "--format", "torchvision"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    exported = torch.load(tmp_path / "out" / "backbone_torchvision.pth", weights_only=True)
    assert set(exported) == {k for k in source if not k.startswith("fc.")}
    assert all(torch.equal(exported[k], source[k]) for k in exported)


@pytest.mark.parametrize("as_url", [False, True])
def test_torch_hub_entry_points(tmp_path, monkeypatch, as_url):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    state = our_checkpoint(tmp_path / "ckpt.pth", arch="resnet18")
    pretrained = (tmp_path / "ckpt.pth").as_uri() if as_url else str(tmp_path / "ckpt.pth")
    model = torch.hub.load(str(REPO), "deepcluster_resnet18", source="local", pretrained=pretrained, progress=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 64, 64)
    assert model.eval()(x).shape == (2, 512)
    if as_url:
        assert len(list((tmp_path / "hub" / "hub" / "checkpoints").glob("*-ckpt.pth"))) == 1
        other = tmp_path / "b" / "ckpt.pth"  # same file name, other folder and weights: not the cached one
        other.parent.mkdir()
        state_b = our_checkpoint(other, arch="resnet18", seed=1)
        model_b = torch.hub.load(str(REPO), "deepcluster_resnet18", source="local", pretrained=other.as_uri())
        assert all(torch.equal(t, state_b[n]) for n, t in model_b.state_dict().items())
    import hubconf

    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    expected = {"deepcluster_resnet18", "deepcluster_resnet50", "deepcluster_alexnet", "deepcluster_vgg16"}
    expected.add("deepcluster_resnet9_w32")  # the small-data rule's network
    assert expected <= set(entries)
    random = torch.hub.load(str(REPO), "deepcluster_resnet50", source="local")
    assert random.feature_dim == 2048


def test_sweep_best_picks_the_highest_and_lists_the_missing(tmp_path):
    sweep = tmp_path / "sweep"
    for name, value in (("lr=0.1", 40.0), ("lr=0.01", 55.5), ("lr=0.001", None)):
        (sweep / name).mkdir(parents=True)
        results = {"top1": value} if value is not None else {"other": 1.0}
        (sweep / name / "results.json").write_text(json.dumps(results))
    proc = run_script("sweep_best.py", [str(sweep), "--metric", "top1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    best = json.loads((sweep / "best.json").read_text())
    assert best["best"].endswith("lr=0.01") and best["value"] == 55.5
    assert [r["value"] for r in best["ranking"]] == [55.5, 40.0]
    assert best["missing"][0].endswith("lr=0.001")
    proc = run_script("sweep_best.py", [str(sweep), "--metric", "nope"], tmp_path)
    assert proc.returncode == 2 and "--metric" in proc.stderr
