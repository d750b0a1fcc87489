"""Data, augmentation, checkpoint and error-path units."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from models import build_model
from util.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment, _shift_hue, augment_preset
from util.checkpoint import atomic_write, load_checkpoint, load_state_strict, save_checkpoint
from util.data import list_images, load_image, resolve_split, subset_indices
from util.datasets import safe_extract
from util.errors import UserError


def test_list_images_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_split(str(tmp_path / "nope"), "train", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        list_images(tmp_path / "empty")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        list_images(tmp_path / "empty")


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=str(bad)):
        load_image(str(bad))


def test_subset_is_fixed_and_independent_of_seed():
    a, b = subset_indices(1000, 100), subset_indices(1000, 100)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 100 and (np.diff(a) > 0).all()
    assert len(subset_indices(50, 100)) == 50


def test_batched_hue_matches_torchvision():
    x = torch.rand(3, 3, 16, 16)
    for shift in (-0.4, 0.1, 0.5):
        ours = _shift_hue(x, torch.full((3,), shift))
        assert torch.allclose(ours, TF.adjust_hue(x, shift), atol=1e-4)


def test_batched_augment_is_seeded_and_random():
    aug = BatchAugment(augment_preset("mmselfsup", 24))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = aug(images, torch.Generator().manual_seed(0))
    b = aug(images, torch.Generator().manual_seed(0))
    c = aug(images, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_crop_without_flip_is_identity():
    spec = augment_preset("paper", 32)
    spec = type(spec)(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = BatchAugment(spec)(images, torch.Generator().manual_seed(0))
    from util.augment import normalize_uint8

    assert torch.allclose(out, normalize_uint8(images), atol=1e-4)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"a": 1}, path)

    def explode(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert load_checkpoint(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind


def test_missing_or_damaged_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pth")


def test_strict_load_names_the_keys():
    model = build_model("resnet18")
    state = build_model("resnet50").state_dict()
    with pytest.raises(UserError, match="wrong shape keys .*check --arch"):
        load_state_strict(model, state, "checkpoint x")
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="unexpected keys extra.weight"):
        load_state_strict(model, state, "checkpoint x")


def test_lighting_noise_is_alexnet_pca_noise_in_both_paths():
    """The RGB shift of the batched path, expressed in the PCA basis, is alpha * eigval with alpha ~ N(0, 0.1); the
    per-image transform adds the same kind of shift."""
    from util.augment import LIGHTING_EIGVAL, LIGHTING_EIGVEC, AugmentSpec, Lighting

    spec = AugmentSpec(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, lighting=0.1)
    flat = torch.full((4000, 3, 8, 8), 128, dtype=torch.uint8)
    out = BatchAugment(spec)(flat, torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    shift = (out * std + mean - 128 / 255).mean((2, 3)).double()  # (N, 3), constant over the pixels
    alpha = shift @ torch.tensor(LIGHTING_EIGVEC, dtype=torch.float64) / torch.tensor(LIGHTING_EIGVAL).double()
    assert torch.allclose(alpha.std(0), torch.full((3,), 0.1, dtype=torch.float64), atol=0.01)  # 6 standard errors
    assert torch.allclose(alpha.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.01)
    torch.manual_seed(0)
    image = torch.full((3, 4, 4), 0.5)
    moved = Lighting(0.1)(image) - image
    assert torch.allclose(moved, moved[:, :1, :1].expand_as(moved)) and moved.abs().max() > 0


@pytest.mark.parametrize("with_filter", [True, False], ids=["tarfile-data-filter", "python-without-it"])
def test_safe_extract_keeps_members_inside_the_folder(tmp_path, monkeypatch, with_filter):
    if not with_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(name: str) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        return path

    good = tmp_path / "good"
    with tarfile.open(archive("cifar/train/a.jpg")) as tar:
        safe_extract(tar, good)
    assert (good / "cifar" / "train" / "a.jpg").read_bytes() == b"abc"
    bad = tmp_path / "bad"
    with tarfile.open(archive("../escaped.jpg")) as tar, pytest.raises(Exception, match="escaped|outside|not a plain"):
        safe_extract(tar, bad)
    assert not (tmp_path / "escaped.jpg").exists()
