"""Memory format, precision and architecture on this machine, side by side in one run: a training step (forward,
cross-entropy, backward, SGD) and an inference pass of each --arch, contiguous (NCHW) against channels_last (NHWC),
float32 against bf16 autocast, on the same random batch, every configuration alternating round by round (best of
--rounds), as images/s and as ratios to the first architecture's contiguous float32.

    .venv/bin/python benchmarks/cpu_formats.py                          # ResNet-18, 32 px, batch 256
    .venv/bin/python benchmarks/cpu_formats.py --arch resnet18 resnet9_w32 resnet18_cifar_w16 resnet18_cifar_w32
    .venv/bin/python benchmarks/cpu_formats.py --image-size 224 --batch-size 32

bf16 rows are measured only where the device has native bf16 (CUDA, or a CPU with avx512_bf16 / amx_bf16), the
condition under which the pretraining scripts accept --amp.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model
from util.precision import native_bf16


def configurations(device: torch.device) -> list[tuple[str, bool, bool]]:
    found = [("float32, contiguous", False, False), ("float32, channels_last", True, False)]
    if native_bf16(device):
        found += [("bf16 autocast, contiguous", False, True), ("bf16 autocast, channels_last", True, True)]
    return found


def timed_steps(model, images, labels, optimizer, steps: int, train: bool, amp: bool) -> float:
    """Seconds for `steps` training steps (or inference passes) after one warm-up step."""
    device_type = images.device.type
    for step in range(steps + 1):
        if step == 1:
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            if train:
                loss = F.cross_entropy(model(images), labels)
            else:
                with torch.no_grad():
                    model(images)
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if device_type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18"], help="architectures, side by side")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
    labels = torch.randint(0, 100, (args.batch_size,), generator=gen).to(device)
    configs = [(arch, *config) for arch in args.arch for config in configurations(device)]
    best: dict[tuple, float] = {}
    for _ in range(args.rounds):
        for arch, name, channels_last, amp in configs:
            for train in (True, False):
                rate = images_per_s(arch, channels_last, amp, train, images, labels, args.steps)
                best[(arch, name, train)] = max(best.get((arch, name, train), 0.0), rate)
    print(f"{args.image_size} px, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads)")
    print("| architecture | configuration | training images/s | ratio | inference images/s | ratio |")
    print("|---|---|---|---|---|---|")
    base_train, base_infer = (best[(*configs[0][:2], train)] for train in (True, False))
    for arch, name, _, _ in configs:
        train_rate, infer_rate = best[(arch, name, True)], best[(arch, name, False)]
        print(
            f"| {arch} | {name} | {train_rate:.0f} | {train_rate / base_train:.2f}x | {infer_rate:.0f} | "
            f"{infer_rate / base_infer:.2f}x |"
        )


def images_per_s(arch: str, channels_last: bool, amp: bool, train: bool, images, labels, steps: int) -> float:
    """Training steps (or inference passes) per second of `arch` with a 100-way linear head, times the batch."""
    torch.manual_seed(0)
    backbone = build_model(arch, sobel=False)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.feature_dim, 100)).to(images.device)
    batch = images
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch = images.contiguous(memory_format=torch.channels_last)
    model.train(train)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return steps * len(images) / timed_steps(model, batch, labels, optimizer, steps, train, amp)


if __name__ == "__main__":
    main()
