"""Evaluation results: results.json, the console table and the W&B table + summary, in one place."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from util.checkpoint import atomic_write
from util.config import write_config
from util.eval.bootstrap import METHOD, interval_lines
from util.eval.pretrained import NETWORK_LABELS, NETWORK_PREFIXES
from util.tracking import Tracker

logger = logging.getLogger("deepcluster")


def row_identity(network: str, pretrained: str, identities: dict) -> list[str]:
    """The first two cells of every results row: which network, and the content hash of its weights."""
    if network == "pixels":
        return [NETWORK_LABELS[network], "no network"]
    label = f"pretrained ({Path(pretrained).name})" if network == "pretrained" else NETWORK_LABELS[network]
    return [label, f"sha256:{identities[network]['sha256'][:12]}"]


def network_rows(results: dict, identities: dict, pretrained: str, cells) -> list[list]:
    """One row per network evaluated (NETWORK_PREFIXES' order): its identity, then cells(prefix) (None where the
    network has no number)."""
    return [
        [*row_identity(network, pretrained, identities), *cells(prefix)]
        for network, prefix in NETWORK_PREFIXES.items()
        if network in identities
    ]


def format_table(columns: list[str], rows: list[list]) -> str:
    """A plain-text table; floats with two decimals, missing values as '-'."""
    cells = [columns] + [
        [f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v)) for v in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


GAIN_ROWS = (("gain", "gain over random init (the higher BatchNorm)"), ("gain_pixels", "gain over the pixels"))


def gain_row(results: dict, keys: list[str], lead: list[str]) -> list[list]:
    """The rows of paired gains under the networks' rows: over the random-init network, over the pixels (each when
    measured); `lead` after the row's label."""
    rows = []
    for suffix, label in GAIN_ROWS:
        gains = [results.get(f"{key}_{suffix}") for key in keys]
        if any(g is not None for g in gains):
            rows.append([label, *lead, *gains])
    return rows


@dataclass(frozen=True)
class ResultsTable:
    """An evaluation's table: its W&B key, title, columns and rows, and the results keys whose bootstrap intervals
    are printed under it."""

    key: str
    title: str
    columns: list[str]
    rows: list[list]
    interval_keys: tuple[str, ...] = ()


def publish(
    args: argparse.Namespace, output_dir: Path, results: dict, meta: dict, tracker: Tracker, table: ResultsTable
) -> None:
    """Write OUTPUT_DIR/results.json (results + meta) and config.yaml (the resolved arguments), log the table and
    the bootstrap intervals of its interval keys, mirror both to W&B."""
    lines = interval_lines(results, list(table.interval_keys))
    if lines:
        meta = {**meta, "bootstrap": METHOD}
    text = json.dumps({**results, **meta}, indent=2, sort_keys=True) + "\n"
    atomic_write(output_dir / "results.json", lambda handle: handle.write(text.encode()))
    write_config(args, output_dir)
    logger.info("%s:\n%s", table.title, format_table(table.columns, table.rows))
    if lines:
        logger.info("bootstrap over the test images (%d resamples):\n%s", METHOD["resamples"], "\n".join(lines))
    tracker.table(table.key, table.columns, table.rows)
    summary = {k: v for k, v in results.items() if isinstance(v, (int, float, str))}
    for key, (low, high) in ((k, v) for k, v in results.items() if k.endswith("_ci95")):
        summary.update({f"{key}_low": low, f"{key}_high": high})
    identities = meta.get("identities", {}).items()
    summary.update({f"identity/{network}": f"sha256:{identity['sha256']}" for network, identity in identities})
    summary.update({k: v for k, v in meta.items() if isinstance(v, (bool, int, float, str)) or k == "hyperparameters"})
    summary.update({"bootstrap": meta["bootstrap"]} if "bootstrap" in meta else {})
    tracker.summary(summary)
