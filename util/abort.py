"""When one rank fails, every rank stops within seconds, with the failing rank's one-line error, whatever launched
them (torchrun, srun, an sbatch script, submitit).

A rank that fails writes its error under a key of the rendezvous store (the TCPStore every rank already reaches) and
waits a few seconds for the others to read it. Every rank watches that key from a background thread, once a second,
through its own connection to the store: on seeing it, the rank logs the error with the failing rank's number and
ends its process with the same exit status. A rank whose store connection breaks (rank 0, which hosts the store, was
killed without a word) ends too, after one line saying so. At a normal end the watchers stop together before rank 0's
store goes away (stop_watching).
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
import time

import torch.distributed as dist

logger = logging.getLogger("deepcluster")

POLL_S = 1.0  # how often each rank looks for another rank's failure
ACK_WAIT_S = 10.0  # how long a failing rank waits for the others to read its error before it exits
STOP_WAIT_S = 60.0  # how long rank 0 keeps the store up at a normal end for the other ranks' watchers to stop


class _Channel:
    def __init__(self, host: str, port: int, rank: int, world_size: int) -> None:
        self.host, self.port, self.rank, self.world_size = host, port, rank, world_size
        # keys unique to this attempt: torchrun's agent store outlives a restart of its workers
        self.prefix = f"deepcluster-abort/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="deepcluster-abort-watch", daemon=True)

    def client(self) -> dist.TCPStore:
        """A connection of this thread's own to the rendezvous store."""
        return dist.TCPStore(self.host, self.port, is_master=False, timeout=datetime.timedelta(seconds=30))

    def _watch(self) -> None:
        try:
            store = self.client()
        except Exception:  # noqa: BLE001 - no store to watch: the process group will report what went wrong
            return
        key = self.prefix + "error"
        while not self.stopped.wait(POLL_S):
            try:
                failed = store.check([key])
                message = store.get(key).decode() if failed else ""
                if failed:
                    store.add(self.prefix + "seen", 1)
            except Exception:  # noqa: BLE001 - the store's host is gone
                if self.stopped.is_set():
                    return
                _end(
                    1,
                    f"rank {self.rank}: lost the rendezvous store on rank 0 (its process ended without an error "
                    "message: killed, out of memory?); stopping this rank too",
                )
            if failed and not self.stopped.is_set():  # set: this rank is the one failing, and says so itself
                status, _, text = message.partition(" ")
                _end(int(status), text)

    def publish(self, status: int, text: str) -> None:
        """Tell every rank that this one failed, and give them ACK_WAIT_S to read it."""
        try:
            store = self.client()
            if not store.check([self.prefix + "error"]):  # the first failure is the one reported
                store.set(self.prefix + "error", f"{status} rank {self.rank}: {text}")
            deadline = time.monotonic() + ACK_WAIT_S
            while store.add(self.prefix + "seen", 0) < self.world_size - 1 and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception:  # noqa: BLE001 - the store is gone too: nothing more to tell
            pass

    def stop(self) -> None:
        """At a normal end, after every rank's last collective: stop watching, then rank 0 waits until every other
        rank has stopped before its store goes away."""
        self.stopped.set()
        self.thread.join()
        try:
            store = self.client()
            if self.rank != 0:
                store.add(self.prefix + "stopped", 1)
                return
            deadline = time.monotonic() + STOP_WAIT_S
            while store.add(self.prefix + "stopped", 0) < self.world_size - 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        except Exception:  # noqa: BLE001
            pass


def _end(status: int, text: str) -> None:
    logger.error("error: %s", text)
    for handler in logger.handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(status)


_CHANNEL: _Channel | None = None


def start_watching(host: str, port: int, rank: int, world_size: int) -> None:
    """After the process group is up: watch for another rank's failure."""
    global _CHANNEL
    _CHANNEL = _Channel(host, port, rank, world_size)
    _CHANNEL.thread.start()


def stop_watching() -> None:
    global _CHANNEL
    if _CHANNEL is not None:
        _CHANNEL.stop()
        _CHANNEL = None


def share_failure(status: int, text: str) -> None:
    """This rank is failing with `text` (one line) and exit `status`: every other rank ends with the same."""
    channel = _CHANNEL
    if channel is not None:
        channel.stopped.set()  # this rank's own watcher must not end it first
        channel.publish(status, text)
