"""--config FILE.yaml: the file's values first, the command line on top; config.yaml reruns a run."""

from __future__ import annotations

import json

import pytest
import yaml

import main_deepcluster
from tests.helpers import REPO, assert_user_error, random_resnet18, run_script
from util.config import add_config_arg, parse_with_config
from util.errors import UserError


def parser():
    made = main_deepcluster.get_args_parser()
    add_config_arg(made)
    return made


def test_config_values_then_the_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("k: 30\npca-dim: 16\nlr: 0.1\naug: noflip\ncrop_scale: [0.3, 1.0]\nflip: false\noutput_dir: o\n")
    args = parse_with_config(parser(), ["--config", str(config), "--lr", "0.2"])
    assert (args.k, args.pca_dim, args.lr, args.aug, args.crop_scale, args.flip) == (
        30,
        16,
        0.2,
        "noflip",
        [0.3, 1.0],
        False,
    )
    assert parse_with_config(parser(), ["--output-dir", "o"]).k is None  # without --config: the parser's defaults


@pytest.mark.parametrize(
    "text,message",
    [
        ("kk: 3\n", "unknown key 'kk'"),
        ("aug: sideways\n", "'sideways' is not one of"),
        ("- k\n- 3\n", "not a mapping"),
        ("k: [1,\n", "not valid YAML at line"),
    ],
)
def test_config_mistakes_are_one_line(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(UserError, match=message):
        parse_with_config(parser(), ["--config", str(config)])
    with pytest.raises(UserError, match="does not exist"):
        parse_with_config(parser(), ["--config", str(tmp_path / "none.yaml")])


def test_a_runs_config_yaml_runs_it_again(tmp_path, tiny_split_folder):
    out = tmp_path / "knn"
    first = run_script(
        "eval_linear.py",
        [*random_resnet18(tiny_split_folder), "--image-size", "32", "--workers", "0", "--protocol", "knn"]
        + ["--wandb-mode", "disabled", "--output-dir", str(out)],
        tmp_path,
    )
    assert first.returncode == 0, first.stderr
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["protocol"] == "knn" and written["image_size"] == 32 and written["in_memory"] is True  # resolved
    expected = json.loads((out / "results.json").read_text())["random_init_knn_top1"]
    (out / "results.json").unlink()
    again = run_script("eval_linear.py", ["--config", str(out / "config.yaml")], tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["random_init_knn_top1"] == expected
    proc = run_script("eval_linear.py", ["--config", str(out / "config.yaml"), "--protocol", "nope"], tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrained: random\nlayers: 3\n")
    assert_user_error(run_script("eval_linear.py", ["--config", str(bad)], tmp_path), "unknown key 'layers'", str(bad))


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "slurm" / "recipes").glob("*.yaml")))
def test_recipe_configs_set_what_they_say(recipe):
    """Every YAML recipe is read by its script's parser, each value landing on its flag."""
    import re

    from slurm.job import load_script, script_parser

    path = REPO / "slurm" / "recipes" / recipe
    script = re.search(r"submit\.py (\S+\.py)", path.with_suffix(".sh").read_text()).group(1)
    given = ["--pretrained", "c.pth", "--data", "d"] if script.startswith("eval_") else []  # the shell recipe's paths
    args = parse_with_config(script_parser(load_script(script)), ["--config", str(path), "--output-dir", "o", *given])
    for key, value in yaml.safe_load(path.read_text()).items():
        assert getattr(args, key) == value, key


TIMING_KEYS = ("time_", "images_per_s", "epoch_images_per_s")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["main_deepcluster.py", "main_deepclusterv2.py"])
def test_a_rule_driven_pretraining_run_replays_from_its_config_yaml(tmp_path, tiny_split_folder, script):
    """Every flag left to the small-data rule (k, PCA, batch, passes, image size, v2's recipe) is resolved into
    config.yaml; --config RUN/config.yaml into another folder gives the same records, epoch by epoch, and the same
    departures from the paper."""
    import torch

    first = tmp_path / "first"
    flags = ["--data", str(tiny_split_folder / "train"), "--knn-data", str(tiny_split_folder / "val")]
    flags += ["--epochs", "1", "--workers", "0", "--deterministic", "--wandb-mode", "disabled"]
    if script == "main_deepclusterv2.py":
        flags += ["--arch", "resnet18", "--hidden-mlp", "64", "--feat-dim", "16"]  # the rest: its small-image recipe
    proc = run_script(script, [*flags, "--output-dir", str(first)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rule_departures" not in yaml.safe_load((first / "config.yaml").read_text())  # derived, not a flag
    again = tmp_path / "again"
    proc = run_script(script, ["--config", str(first / "config.yaml"), "--output-dir", str(again)], tmp_path)
    assert proc.returncode == 0, proc.stderr

    def records(run):
        lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in lines]

    assert records(again) == records(first) and records(first)[0]["knn_floor"] is not None
    saved = [torch.load(run / "checkpoint.pth", weights_only=False)["args"] for run in (first, again)]
    assert saved[0].get("rule_departures") == saved[1].get("rule_departures")
