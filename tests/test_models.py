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


def test_sobel_on_a_step_edge_gives_the_known_x_response_and_no_y_response():
    """A vertical step (0 left, 1 right) in every channel: gray = 1 on the right; the Sobel x kernel
    [[1, 0, -1], [2, 0, -2], [1, 0, -1]] (cross-correlation) gives -4 on the two columns beside the step, y 0."""
    from models.sobel import Sobel

    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    edges = Sobel()(image)[0, :, 1:-1, :]  # rows away from the zero-padded border
    expected_x = torch.zeros(6, 8)
    expected_x[:, 3:5] = -4.0
    torch.testing.assert_close(edges[0, :, 1:-1], expected_x[:, 1:-1])
    assert edges[1, :, 1:-1].abs().max() == 0


def test_resnet50_multihead_taps_pool_to_the_protocol_dims_at_224():
    """mmselfsup's multi-head protocol: 9216 / 9216 / 8192 / 9216 / 8192 dims at 224 px."""
    from util.eval.probes import build_tap_pooling

    model = build_model("resnet50").eval()
    pooling = build_tap_pooling(model, "resnet50", 224, torch.device("cpu"))
    assert pooling.dims == [9216, 9216, 8192, 9216, 8192]
    with torch.no_grad():
        pooled = pooling(model.forward_taps(torch.zeros(1, 3, 224, 224)))
    assert [p[0].numel() for p in pooled] == pooling.dims


def test_fc_stacks_follow_the_original_layouts():
    """AlexNet: Dropout-Linear-ReLU-Dropout-Linear; VGG16: Linear-ReLU-Dropout-Linear (the final ReLU is the head's)."""
    kinds = {arch: [type(m).__name__ for m in build_model(arch).classifier] for arch in ("alexnet", "vgg16")}
    assert kinds["alexnet"] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert kinds["vgg16"] == ["Linear", "ReLU", "Dropout", "Linear"]
