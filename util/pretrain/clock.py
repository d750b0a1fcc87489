"""The run's time on this machine, estimated from its first training steps and said once in the log."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable, Iterator

logger = logging.getLogger("deepcluster")

STEPS_TO_MEASURE = 20  # training steps timed before the estimate (the first is excluded: warm-up)


class RunClock:
    """Times the first training steps of the first epoch a process runs and logs one line: the epoch's time (the
    passes before training as measured, training extrapolated from the steps' rate), the whole run's, and when it
    ends. In batch logs as on terminals: a user learns what a command costs within a minute, not after an epoch."""

    def __init__(self, epochs_left: int, is_main: bool) -> None:
        self.epochs_left = epochs_left  # epochs to train, plus the final measurement (passes without training)
        self.is_main = is_main
        self.said = False

    def watch(self, batches: Iterable, num_steps: int, before_training: float, batch_images: int) -> Iterator:
        """Yield `batches` unchanged; after STEPS_TO_MEASURE + 1 of them (or the epoch's last), log the estimate.
        before_training: seconds this epoch spent before its first step (extraction, clustering, monitor)."""
        start = None
        for step, batch in enumerate(batches):
            yield batch
            if self.said:
                continue
            if step == 0:
                start = time.perf_counter()  # after the first step: its one-off costs are not the rate
            elif step == STEPS_TO_MEASURE or step == num_steps - 1:
                rate = step / (time.perf_counter() - start)  # steps per second
                self._say(before_training, num_steps / rate, rate * batch_images)

    def _say(self, before_training: float, training: float, images_per_s: float) -> None:
        self.said = True
        if not self.is_main:
            return
        epoch = before_training + training
        total = epoch * (self.epochs_left - 1) + before_training  # the final measurement does not train
        end = datetime.datetime.now() + datetime.timedelta(seconds=total)
        logger.info(
            "estimate on this machine: %.1f min an epoch (training at %.0f images/s), %.0f min for the %d epoch(s) "
            "left and the final measurement, done around %s",
            epoch / 60,
            images_per_s,
            total / 60,
            self.epochs_left - 1,
            end.strftime("%Y-%m-%d %H:%M"),
        )
