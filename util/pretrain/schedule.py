"""DeepCluster-v2's learning-rate schedule (SwAV's): a linear warmup, then a cosine to the final rate, per step."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(
    base_lr: float, final_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float, start_warmup: float
) -> np.ndarray:
    """The learning rate of every step (SwAV): linear from start_warmup to base_lr over the warmup, then a cosine
    from base_lr down to final_lr at the last step."""
    total = epochs * steps_per_epoch
    warmup = min(total, round(warmup_epochs * steps_per_epoch))
    ramp = np.linspace(start_warmup, base_lr, warmup) if warmup else np.zeros(0)
    rest = np.arange(total - warmup)
    cosine = final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(math.pi * rest / max(1, len(rest))))
    return np.concatenate([ramp, cosine])
