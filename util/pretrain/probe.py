"""The online linear probe (solo-learn's protocol): a linear classifier on the detached pooled backbone features of
every training step, trained on the training split's labels with its own SGD (lr 0.1, momentum 0.9, no weight
decay), measured on the kNN monitor's held-out features every --knn-every epochs. It never touches the backbone: its
input is detached, its weights start at zero and it draws nothing from any RNG, so the backbone trains bit for bit
as without it.

Departure from solo-learn: each feature vector is L2-normalised and scaled by sqrt(D) (its entries then have a mean
square of 1) before the linear layer, so that one learning rate suits every architecture's feature scale (a
ResNet-9's pooled features are an order of magnitude larger than a ResNet-18's, and SGD at lr 0.1 on them
oscillates); it holds no state, so every rank and every resume computes the same."""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from util import dist as dist_util

PROBE_LR, PROBE_MOMENTUM = 0.1, 0.9


def add_probe_arg(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--online-probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train a linear classifier on the detached backbone features during pretraining on the training labels "
        "(solo-learn's online probe), measured beside kNN; on whenever the kNN monitor is (default: on)",
    )


def wants_probe(args: argparse.Namespace) -> bool:
    """--online-probe with the kNN monitor on (the probe is measured on its held-out split)."""
    return bool(args.online_probe and args.knn_every > 0)


def scaled(features: torch.Tensor) -> torch.Tensor:
    """(B, D) -> float32 rows of norm sqrt(D): entries of mean square 1, whatever the network's feature scale."""
    return F.normalize(features.float(), dim=1) * features.shape[1] ** 0.5


class OnlineProbe:
    def __init__(self, feature_dim: int, num_classes: int, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation must not move the global RNG
            self.linear = nn.Linear(feature_dim, num_classes)
        self.linear = self.linear.to(device)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=PROBE_LR, momentum=PROBE_MOMENTUM)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One SGD step on (B, D) features (detached here) and their (B,) labels, on the device, no host read;
        distributed: the gradients averaged over the ranks."""
        with torch.autocast(features.device.type, enabled=False):
            loss = F.cross_entropy(self.linear(scaled(features.detach())), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        info = dist_util.current()
        if info.distributed:
            for param in self.linear.parameters():
                torch.distributed.all_reduce(param.grad)
                param.grad /= info.world_size
        self.optimizer.step()

    @torch.no_grad()
    def top1(self, features: torch.Tensor, targets: np.ndarray) -> float:
        """Top-1 (%) on (M, D) held-out features."""
        device = self.linear.weight.device
        predicted = self.linear(scaled(features.to(device))).argmax(1).cpu()
        return 100.0 * float((predicted == torch.from_numpy(targets)).float().mean())

    def state_dict(self) -> dict:
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])
