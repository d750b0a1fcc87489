"""Published checkpoints load strictly: synthetic checkpoints written in each public key layout, built here from
the original architectures' own module structure (not from our models), then loaded through --pretrained."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from util.errors import UserError
from util.eval.layouts import convert_checkpoint
from util.eval.pretrained import load_backbone

CPU = torch.device("cpu")


def original_sobel() -> nn.Sequential:
    """The original's front end: a 1x1 grayscale conv (weights 1/3, bias 0), then Sobel x / y 3x3 filters."""
    grayscale = nn.Conv2d(3, 1, kernel_size=1)
    grayscale.weight.data.fill_(1.0 / 3.0)
    grayscale.bias.data.zero_()
    sobel = nn.Conv2d(1, 2, kernel_size=3, padding=1)
    sobel.weight.data[0, 0] = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    sobel.weight.data[1, 0] = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
    sobel.bias.data.zero_()
    return nn.Sequential(grayscale, sobel)


class OriginalNet(nn.Module):
    """facebookresearch/deepcluster's AlexNet / VGG16 module structure: sobel, features, classifier, top_layer."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        layers, channels = [], 2
        if arch == "alexnet":
            for item in [(96, 11, 4, 2), "M", (256, 5, 1, 2), "M", (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1), "M"]:
                if item == "M":
                    layers.append(nn.MaxPool2d(3, 2))
                    continue
                layers += [nn.Conv2d(channels, item[0], *item[1:]), nn.BatchNorm2d(item[0]), nn.ReLU(True)]
                channels = item[0]
            self.classifier = nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(256 * 6 * 6, 4096),
                nn.ReLU(True),
                nn.Dropout(0.5),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
            )
        else:
            for item in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
                if item == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                    continue
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(True)]
                channels = item
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(True)
            )
        self.features = nn.Sequential(*layers)
        self.top_layer = nn.Linear(4096, 10)
        self.sobel = original_sobel()

    def fc7_before_relu(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(self.sobel(x)), 1)
        return self.classifier[:-1](x)


def randomise(module: nn.Module, seed: int) -> None:
    """Non-trivial values everywhere, BatchNorm statistics included, so a wrong mapping cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point() or "sobel" in name:
            continue
        noise = torch.rand(tensor.shape, generator=gen) - 0.5  # uniform in [-0.5, 0.5)
        if tensor.dim() > 1:  # conv / linear weights: variance 1 / fan-in, so activations stay finite through VGG16
            tensor.copy_(noise * (12 / tensor[0].numel()) ** 0.5)
        elif name.endswith(("running_var", ".weight")):  # BatchNorm scales and variances near 1
            tensor.copy_(1 + noise * 0.5)
        else:
            tensor.copy_(noise * 0.1)


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_original_deepcluster_checkpoint_loads_and_computes_the_same_features(tmp_path, arch):
    original = OriginalNet(arch).eval()
    randomise(original, seed=1)
    state = {}
    for key, value in original.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # saved with PyTorch 0.3: no BatchNorm counters
        state[key.replace("features.", "features.module.", 1) if key.startswith("features.") else key] = value
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 100, "arch": arch, "state_dict": state, "optimizer": {}}, path)
    ours = load_backbone(str(path), arch, None, CPU)
    assert ours.sobel is not None  # inferred from the checkpoint's Sobel filters
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original.fc7_before_relu(x), rtol=1e-4, atol=1e-4)


def test_mmselfsup_checkpoint_with_sobel_layer_loads(tmp_path):
    backbone = torchvision.models.resnet18(weights=None)
    backbone.conv1 = nn.Conv2d(2, 64, 7, 2, 3, bias=False)
    backbone.eval()
    randomise(backbone, seed=2)
    sobel = original_sobel()
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    state.update({f"sobel_layer.{k}": v for k, v in sobel.state_dict().items()})
    state.update({"neck.fc.weight": torch.zeros(10, 512), "head.fc_cls.weight": torch.zeros(10, 10)})
    path = tmp_path / "mmselfsup.pth"
    torch.save({"meta": {"epoch": 200}, "state_dict": state}, path)
    report = convert_checkpoint(torch.load(path, weights_only=False), "resnet18").summary("mmselfsup.pth")
    assert "mmselfsup layout" in report and "neck" in report and "head" in report and "sobel_layer.* (4)" in report
    ours = load_backbone(str(path), "resnet18", None, CPU)
    torch.testing.assert_close(ours.conv1.weight, backbone.conv1.weight)
    torch.testing.assert_close(ours.layer4[1].bn2.running_var, backbone.layer4[1].bn2.running_var)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.flatten(nn.Sequential(*list(backbone.children())[:-1])(sobel(x)), 1)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)


def test_swav_deepclusterv2_checkpoint_loads_without_its_heads(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    randomise(net, seed=3)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state.update(
        {
            "module.projection_head.0.weight": torch.zeros(2048, 512),
            "module.prototypes.prototypes0.weight": torch.zeros(3000, 128),
        }
    )
    path = tmp_path / "deepclusterv2_800ep_pretrain.pth.tar"
    torch.save(state, path)
    ours = load_backbone(str(path), "resnet18", None, CPU)
    assert ours.sobel is None
    torch.testing.assert_close(ours.layer3[0].downsample[0].weight, net.layer3[0].downsample[0].weight)


def test_a_checkpoint_with_other_sobel_filters_is_refused(tmp_path):
    original = OriginalNet("alexnet")
    state = {k.replace("features.", "features.module.", 1): v for k, v in original.state_dict().items()}
    state["sobel.1.weight"] = -state["sobel.1.weight"]
    path = tmp_path / "other.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError, match="Sobel filters .* differ"):
        load_backbone(str(path), "alexnet", None, CPU)
    with pytest.raises(UserError, match="an AlexNet or a VGG16"):
        load_backbone(str(path), "resnet50", None, CPU)
