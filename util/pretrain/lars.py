"""LARS as SwAV uses it (apex's LARC around SGD) or as solo-learn does."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each parameter tensor p is scaled by its trust ratio

        ratio = trust * |p| / (|g| + weight_decay * |p| + eps),  g <- ratio * (g + weight_decay * p),

    then the momentum step p <- p - lr * buf. Defaults: apex's LARC with clip=False (You et al. 2017), which SwAV
    wraps around SGD: every tensor (biases and BatchNorm too) is adapted, and a tensor whose weight or gradient norm
    is zero gets neither the ratio nor the weight decay. `clip` caps the ratio at 1 / lr (the adapted step is then
    never larger than plain SGD's) and `exclude_1d` leaves biases and BatchNorm parameters to plain SGD without weight
    decay: solo-learn's LARS options, which its CIFAR-10 DeepCluster-v2 recipe turns on."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust: float = 0.001,
        clip: bool = False,
        exclude_1d: bool = False,
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, clip=clip, exclude_1d=exclude_1d, eps=eps
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """One update of every parameter, without reading a tensor's value on the host: the zero-norm case is a
        torch.where, not a Python branch (which would make the host wait for the device once per tensor)."""
        for group in self.param_groups:
            wd, lr = group["weight_decay"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not (group["exclude_1d"] and p.ndim == 1):
                    weight_norm, grad_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = group["trust"] * weight_norm / (grad_norm + wd * weight_norm + group["eps"])  # () scalar
                    if group["clip"]:
                        ratio = torch.clamp(ratio / lr, max=1.0)
                    adapted = (weight_norm > 0) & (grad_norm > 0)  # () bool: else neither the ratio nor weight decay
                    grad = torch.where(adapted, (grad + wd * p) * ratio, grad)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-lr)
