"""channels_last computes the same network and saves loadable weights; --amp only where bf16 is native."""

from __future__ import annotations

import pytest
import torch

import util.precision as precision
from models import build_model
from util.errors import UserError


def test_channels_last_computes_the_same_features_and_saves_the_same_weights():
    torch.manual_seed(0)
    plain = build_model("resnet18", sobel=False).eval()
    converted = precision.to_channels_last(build_model("resnet18", sobel=False).eval())
    converted.load_state_dict(plain.state_dict())
    assert converted.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, reference = converted(images), plain(images)
    # float32 convolutions summed in another order: about 1e-6 apart on features of order 1
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    back = build_model("resnet18", sobel=False)
    back.load_state_dict(converted.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), plain.state_dict().values(), strict=True))


def test_amp_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(UserError, match="--amp needs CUDA or a CPU with native bf16"):
        precision.check_amp(True, "cpu")
    precision.check_amp(False, "cpu")
    precision.check_amp(True, "cuda")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    precision.check_amp(True, "cpu")


def test_compile_keeps_the_weights_names_and_the_function():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    reference.load_state_dict(net.state_dict())
    keys = list(net.state_dict())
    assert precision.compile_in_place(net, False) is net and net._compiled_call_impl is None
    precision.compile_in_place(net, True)
    assert net._compiled_call_impl is not None and list(net.state_dict()) == keys
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the compiled kernels sum in another order: float32 rounding apart
        torch.testing.assert_close(net(images), reference(images), rtol=1e-4, atol=1e-5)
    reference.load_state_dict(net.state_dict())  # a compiled model's checkpoint loads into a plain one
