"""`--config FILE.yaml` for every script (the file's values first, the command line on top) and `config.yaml`, the
resolved arguments a run writes beside its outputs, so that `--config OUTPUT_DIR/config.yaml` runs it again."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from util.checkpoint import atomic_write
from util.errors import UserError

CONFIG_NAME = "config.yaml"
# Values a run derives from its flags and keeps beside them in its arguments (the checkpoint's, W&B's), which are not
# flags: config.yaml leaves them out and a config that holds them (written before they were left out) passes them by,
# since the run computes them again from the flags.
DERIVED = ("rule_departures",)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE.yaml",
        help="flags from a YAML mapping (keys as the flags' names, with - or _), the command line on top; every run "
        f"writes {CONFIG_NAME} (its resolved arguments) beside its outputs, so --config OUTPUT_DIR/{CONFIG_NAME} "
        "runs it again",
    )


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with the defaults of every flag the --config file names replaced by its values first."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", default=None)
    found, _ = early.parse_known_args(argv)
    if found.config:
        apply_config(parser, Path(found.config), load_config(Path(found.config)))
    return parser.parse_args(argv)


def load_config(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"--config {path} does not exist: give the path of a YAML file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"--config {path} is not valid YAML{where}: fix the file") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"--config {path} holds a {type(values).__name__}, not a mapping of flag names to values")
    return values


def apply_config(parser: argparse.ArgumentParser, path: Path, values: dict) -> None:
    """The config's values as the parser's defaults; an unknown key or a value outside a flag's choices is one
    line, as an unknown flag is."""
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    defaults = {}
    for key, value in values.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest in DERIVED:
            continue
        if dest not in actions:
            raise UserError(
                f"--config {path}: unknown key {key!r}: {parser.prog} has no flag --{dest.replace('_', '-')}"
            )
        action = actions[dest]
        for item in value if isinstance(value, list) else [value]:
            if action.choices is not None and item not in action.choices:
                choices = ", ".join(map(str, action.choices))
                raise UserError(f"--config {path}: {key}: {item!r} is not one of {choices}")
        if action.type is not None and isinstance(value, str):
            value = action.type(value)
        action.required = False  # given by the file
        defaults[dest] = value
    parser.set_defaults(**defaults)


def write_config(args: argparse.Namespace, output_dir: Path) -> None:
    """OUTPUT_DIR/config.yaml: every argument as the run resolved it (rule-chosen values included), atomically."""
    values = {k: _plain(v) for k, v in sorted(vars(args).items()) if k != "config" and k not in DERIVED}
    text = yaml.safe_dump(values, sort_keys=True, default_flow_style=None)
    atomic_write(output_dir / CONFIG_NAME, lambda handle: handle.write(text.encode()))


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
