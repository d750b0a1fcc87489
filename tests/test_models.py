import pytest
import torch
import torchvision

from models import ARCHS, build_model


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("sobel", [False, True])
def test_shapes_and_taps(arch, sobel):
    size = 32 if "cifar" in arch else 64
    model = build_model(arch, sobel).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, size, size)
        feats, taps = model(x), model.forward_taps(x)
    assert feats.shape == (2, model.feature_dim)
    assert len(taps) == 5 and all(t.shape[0] == 2 and t.dim() == 4 for t in taps)


def test_sobel_is_fixed():
    model = build_model("resnet18", sobel=True)
    assert not any("sobel" in name for name, _ in model.named_parameters())  # buffers, never trained
    assert model.conv1.in_channels == 2
    edges = model.sobel(torch.ones(1, 3, 8, 8))  # a flat image has no edges inside
    assert edges[..., 1:-1, 1:-1].abs().max() == 0


def test_resnet_state_dict_matches_torchvision_names():
    ours = set(build_model("resnet50").state_dict())
    theirs = {k for k in torchvision.models.resnet50(weights=None).state_dict() if not k.startswith("fc.")}
    assert ours == theirs


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet1000")
