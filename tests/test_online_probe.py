"""The online linear probe: measured beside kNN, and the backbone trains bit for bit as without it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import read_jsonl, run_script

V1 = "--arch resnet18 --k 6 --pca-dim 16 --batch-size 16 --reassign 1 --image-size 32 --in-memory".split()
V2 = "--arch resnet18 --image-size 32 --in-memory --nmb-crops 2 --size-crops 32 --feat-dim 16 --hidden-mlp 32".split()
V2 += "--nmb-prototypes 12 8 --batch-size 16".split()


@pytest.mark.parametrize("script,flags", [("main_deepcluster.py", V1), ("main_deepclusterv2.py", V2)])
def test_the_probe_is_measured_and_leaves_the_backbone_untouched(tmp_path, tiny_split_folder, script, flags):
    common = [*flags, "--data", str(tiny_split_folder / "train"), "--knn-data", str(tiny_split_folder / "val")]
    common += ["--workers", "0", "--epochs", "2", "--deterministic", "--wandb-mode", "disabled"]
    weights = {}
    for probe in ("--online-probe", "--no-online-probe"):
        out = tmp_path / probe
        proc = run_script(script, [*common, probe, "--output-dir", str(out)], tmp_path)
        assert proc.returncode == 0, proc.stderr
        weights[probe] = torch.load(out / "checkpoint.pth", weights_only=False)
        measured = [r.get("probe_top1") for r in read_jsonl(out / "log.jsonl")]
        if probe == "--online-probe":
            assert measured[0] is None and all(0 <= m <= 100 for m in measured[1:]), measured
            assert "online probe" in proc.stderr
            maps = sorted(
                p.name for p in (out / "maps").glob("*.png")
            )  # epoch 0 and the final network (--tsne-every 10)
            assert maps == ["tsne_epoch_0000.png", "tsne_epoch_0002.png"]
        else:
            assert measured == [None] * 3
    with_probe, without = weights["--online-probe"], weights["--no-online-probe"]
    assert with_probe["online_probe"] is not None and without["online_probe"] is None
    for name, tensor in without["backbone"].items():
        assert torch.equal(tensor, with_probe["backbone"][name]), name
