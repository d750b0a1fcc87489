"""The run's time on this machine: estimated from its training steps, said in one line after the first steps and
refreshed at every step-log interval (the time left and when the run ends)."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable, Iterator

logger = logging.getLogger("deepcluster")

STEPS_TO_MEASURE = 20  # training steps timed before the first estimate (the first is excluded: warm-up)


class RunClock:
    """Times the training steps of every epoch. The rate comes from this epoch's steps after its first (whose
    one-off costs are not the rate); an epoch's passes before training (extraction, clustering, the monitor) are
    counted at their measured length, without the one-off costs of the first epoch (the floors, the v2 bank fill),
    which the caller leaves out of `before_training`. The final measurement is a pass without training."""

    def __init__(self, epochs_left: int, is_main: bool) -> None:
        self.epochs_left = epochs_left  # epochs to train, the current one included, plus the final measurement
        self.is_main = is_main
        self.said = False
        self.before_training, self.num_steps, self.step = 0.0, 0, 0
        self.start: float | None = None  # when this epoch's second step began
        self.rate: float | None = None  # steps per second in this epoch

    def watch(self, batches: Iterable, num_steps: int, before_training: float, batch_images: int) -> Iterator:
        """Yield `batches` unchanged, timing them; after STEPS_TO_MEASURE + 1 of the first epoch's steps (or its
        last), log the estimate. before_training: seconds this epoch spent before its first step, one-off costs
        excluded."""
        self.before_training, self.num_steps, self.start, self.rate = before_training, num_steps, None, None
        for step, batch in enumerate(batches):
            yield batch
            self.step = step + 1
            if step == 0:
                self.start = time.perf_counter()
                continue
            self.rate = step / (time.perf_counter() - self.start)
            if not self.said and (step == STEPS_TO_MEASURE or step == num_steps - 1):
                self._say(batch_images)
        self.epochs_left -= 1

    def seconds_left(self) -> float | None:
        """The run's seconds left: this epoch's steps, the later epochs (passes and steps) and the final
        measurement (passes only); None before the rate is known."""
        if self.rate is None:
            return None
        epoch = self.before_training + self.num_steps / self.rate
        later = max(0, self.epochs_left - 2)  # training epochs after this one
        return (self.num_steps - self.step) / self.rate + later * epoch + self.before_training

    def words(self) -> str:
        """`about 12 min left, done around 14:05`, or '' before the rate is known."""
        left = self.seconds_left()
        if left is None:
            return ""
        end = datetime.datetime.now() + datetime.timedelta(seconds=left)
        return f"about {left / 60:.0f} min left, done around {end.strftime('%H:%M')}"

    def _say(self, batch_images: int) -> None:
        self.said = True
        if not self.is_main:
            return
        epoch = self.before_training + self.num_steps / self.rate
        total = self.seconds_left()
        end = datetime.datetime.now() + datetime.timedelta(seconds=total)
        logger.info(
            "estimate on this machine: %.1f min an epoch (training at %.0f images/s), %.0f min for the %d epoch(s) "
            "left and the final measurement, done around %s",
            epoch / 60,
            self.rate * batch_images,
            total / 60,
            self.epochs_left - 1,
            end.strftime("%Y-%m-%d %H:%M"),
        )
