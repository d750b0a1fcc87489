"""An offline W&B run read from its own file (offline-run-*/run-ID.wandb), with no server, no login and no CLI.

The file is W&B's transaction log: a 7-byte header (`:W&B`, a 2-byte magic, a version byte), then records framed as a
LevelDB log (32 KiB blocks; each fragment a 7-byte header: checksum (4), length (2, little-endian), type (1: full,
2: first, 3: middle, 4: last) and its bytes; a block's last < 7 bytes are padding), each record one
`wandb.proto.wandb_internal_pb2.Record` message. Those messages are the run's config, history rows and summary
updates, exactly what `wandb sync` uploads. report.py reads pretraining and evaluation runs from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from util.errors import UserError

BLOCK = 32 * 1024
FRAGMENT_HEADER = 7
FILE_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def fragments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of every fragment after the file header, in order."""
    pos = FILE_HEADER
    while pos + FRAGMENT_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < FRAGMENT_HEADER:  # the block's trailer: zeros
            pos += left_in_block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:  # zero-filled rest of a block
            pos += left_in_block
            continue
        payload = data[pos + FRAGMENT_HEADER : pos + FRAGMENT_HEADER + length]
        if len(payload) < length:  # a run still writing, or cut off: what came before stands
            return
        yield kind, payload
        pos += FRAGMENT_HEADER + length


def records(path: Path) -> Iterator:
    """Every Record message of a .wandb file, in the order written."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise UserError(f"{path} is not a W&B run file (no :W&B header): pass an offline-run-* folder")
    pending = b""
    for kind, payload in fragments(data):
        if kind == FIRST:
            pending = payload
            continue
        if kind == MIDDLE:
            pending += payload
            continue
        message = pending + payload if kind == LAST else payload
        pending = b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(message)
        yield record


def _items(items, flatten: bool = False) -> dict:
    """{key: value} of config / summary / history items (JSON-encoded values). A nested key [a, b] becomes out[a][b],
    or with `flatten` (history rows) the key `a.b`, where dict values are flattened the same way: W&B's own reader
    shows both so."""
    out: dict = {}
    for item in items:
        value = json.loads(item.value_json) if item.value_json else None
        path = list(item.nested_key) or [item.key]
        if flatten:
            key = ".".join(path)
            if isinstance(value, dict):
                out.update({f"{key}.{sub}": inner for sub, inner in value.items()})
            else:
                out[key] = value
            continue
        into = out
        for part in path[:-1]:
            into = into.setdefault(part, {})
        into[path[-1]] = value
    return out


def read_run(run_dir: Path) -> dict:
    """The run of an offline-run-* folder: {"run": {id, name, group, job_type}, "config": {...}, "summary": {...},
    "history": [row, ...]} with config values unwrapped from W&B's {"value": ...}."""
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise UserError(f"{run_dir} holds no run-*.wandb file: pass an offline-run-* folder")
    run: dict = {"id": None, "name": None, "group": None, "job_type": None}
    config: dict = {}
    summary: dict = {}
    history: list[dict] = []
    for record in records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name or None, group=record.run.run_group or None)
            run["job_type"] = record.run.job_type or None
            config.update(_items(record.run.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "history":
            history.append(_items(record.history.item, flatten=True))
    config = {k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v for k, v in config.items()}
    config = {k: v for k, v in config.items() if "." not in k and not k.startswith("_")}
    return {"run": run, "config": config, "summary": summary, "history": history}
