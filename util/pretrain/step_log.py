"""The training loss of an epoch, summed on the device and read once every --log-every steps.

Reading a CUDA tensor's value (`.item()`, `bool()`, `if torch.isfinite(loss)`) makes the host wait for every queued
kernel: one such read per step keeps the GPU idle between steps. Here a step only adds its loss to a device
accumulator; the host reads the accumulator once an interval, logs the interval's mean loss and throughput, and
stops the run there if the loss stopped being finite (a NaN or inf step makes the interval's sum non-finite). The
failed epoch writes nothing, so the last checkpoint is kept, as with a check every step.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from util.errors import UserError
from util.pretrain.clock import RunClock

logger = logging.getLogger("deepcluster")


class StepLog:
    """One epoch's loss. `add` after every step (no host-device synchronisation); `finish` at the epoch's end
    returns {"loss": mean over the images, "images": count}. The sums are float64 on the device: the mean of a
    long epoch does not depend on the interval length beyond float64 rounding."""

    def __init__(
        self,
        every: int,
        epoch: int,
        num_steps: int,
        device: torch.device,
        advice: str,
        is_main: bool = True,
        clock: RunClock | None = None,
    ) -> None:
        self.every, self.epoch, self.num_steps, self.advice, self.is_main = every, epoch, num_steps, advice, is_main
        self.clock = clock  # the run's clock: every interval's line says the time left
        self.interval = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss x images since the last read
        self.total, self.images, self.interval_images, self.first_step, self.last_step = 0.0, 0, 0, 0, -1
        self.started = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, images: int) -> None:
        """Add a step's mean loss over its `images`; every `every` steps, read the interval (one sync)."""
        self.interval += loss.detach().to(torch.float64) * images
        self.images += images
        self.interval_images += images
        self.last_step = step
        if (step + 1) % self.every == 0:
            self._read(step)

    def finish(self) -> dict:
        if self.last_step >= self.first_step:
            self._read(self.last_step)
        return {"loss": self.total / max(1, self.images), "images": self.images}

    def _read(self, step: int) -> None:
        value = float(self.interval)  # the interval's one host-device synchronisation
        if not math.isfinite(value):
            where = f"step {step}" if step == self.first_step else f"steps {self.first_step}-{step}"
            raise UserError(
                f"loss is {value} at epoch {self.epoch} {where}: {self.advice}; the last checkpoint is kept"
            )
        self.total += value
        if self.is_main:
            elapsed = time.perf_counter() - self.started
            left = self.clock.words() if self.clock is not None else ""
            logger.info(
                "epoch %d step %d/%d  loss %.4f  %.0f images/s%s",
                self.epoch,
                step + 1,
                self.num_steps,
                value / self.interval_images,
                self.images / max(elapsed, 1e-9),
                f"  ({left})" if left else "",
            )
        self.interval.zero_()
        self.interval_images, self.first_step = 0, step + 1
