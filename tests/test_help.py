"""Every entry script's --help runs and names its departures from the paper."""

import pytest

from tests.helpers import run_script

SCRIPTS = ["main_deepcluster.py", "eval_linear.py", "eval_svm.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs(tmp_path, script):
    proc = run_script(script, ["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--output-dir" in proc.stdout


def test_pretrain_help_names_departures(tmp_path):
    text = run_script("main_deepcluster.py", ["--help"], tmp_path).stdout
    assert "fit on all (the paper)" in " ".join(text.split())
