"""Every entry script's --help runs and names its departures from the paper (all in one Python process,
tests/run_cases.py, each exactly as `python SCRIPT --help`)."""

import pytest

from slurm.job import load_script
from tests.helpers import run_in_one_process

SCRIPTS = [
    "main_deepcluster.py",
    "main_deepclusterv2.py",
    "eval_linear.py",
    "eval_svm.py",
    "eval_semisup.py",
    "export_weights.py",
    "report.py",
]


@pytest.fixture(scope="module")
def help_texts(tmp_path_factory) -> dict[str, str]:
    results = run_in_one_process([(script, ["--help"]) for script in SCRIPTS], tmp_path_factory.mktemp("help"))
    for script, result in zip(SCRIPTS, results, strict=True):
        assert result["code"] == 0, (script, result["stderr"])
    return {script: " ".join(result["stdout"].split()) for script, result in zip(SCRIPTS, results, strict=True)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_names_every_flag_of_the_parser(help_texts, script):
    module = load_script(script)
    flags = {flag for action in module.get_args_parser()._actions for flag in action.option_strings}
    missing = sorted(
        flag for flag in flags if flag not in help_texts[script].split() and f"{flag}," not in help_texts[script]
    )
    assert not missing, f"{script} --help does not show {missing}"


def test_pretrain_help_names_departures(help_texts):
    assert "fit on all (the paper)" in help_texts["main_deepcluster.py"]


def test_semisup_help_names_the_presets_and_departures(help_texts):
    text = help_texts["eval_semisup.py"]
    assert "the LAST epoch is reported" in text and "the BEST epoch is reported" in text
    assert "--percent draws its own per-class subset" in text


def test_dcv2_help_names_departures(help_texts):
    text = help_texts["main_deepclusterv2.py"]
    assert "departures from SwAV's main_deepclusterv2.py" in text
    assert "not one bank per process" in text and "solo-learn's CIFAR recipe, not SwAV's" in text


def test_report_help_says_where_published_rows_come_from(help_texts):
    text = help_texts["report.py"]
    assert "ResNet-50 + Sobel" in text and "never filled in" in text
