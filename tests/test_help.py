"""Every entry script's --help runs and names its departures from the paper."""

import pytest

from tests.helpers import run_script

SCRIPTS = [
    "main_deepcluster.py",
    "main_deepclusterv2.py",
    "eval_linear.py",
    "eval_svm.py",
    "eval_semisup.py",
    "export_weights.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs(tmp_path, script):
    proc = run_script(script, ["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--output-dir" in proc.stdout


def test_pretrain_help_names_departures(tmp_path):
    text = run_script("main_deepcluster.py", ["--help"], tmp_path).stdout
    assert "fit on all (the paper)" in " ".join(text.split())


def test_semisup_help_names_the_presets_and_departures(tmp_path):
    text = " ".join(run_script("eval_semisup.py", ["--help"], tmp_path).stdout.split())
    assert "the LAST epoch is reported" in text and "the BEST epoch is reported" in text
    assert "--percent draws its own per-class subset" in text


def test_dcv2_help_names_departures(tmp_path):
    text = " ".join(run_script("main_deepclusterv2.py", ["--help"], tmp_path).stdout.split())
    assert "departures from SwAV's main_deepclusterv2.py" in text
    assert "not one bank per process" in text and "solo-learn's CIFAR recipe, not SwAV's" in text
