"""Every command in the README's and docs' code blocks parses with its script's own parser, so the documentation
cannot drift from the flags; the README stays a front page."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from slurm.job import load_script, script_parser
from slurm.submit import launcher_parser
from tests.helpers import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PARSED = {"main_deepcluster.py", "main_deepclusterv2.py", "eval_linear.py", "eval_svm.py", "eval_semisup.py"}
PARSED |= {"export_weights.py", "report.py", "sweep_best.py"}


def code_lines(path: Path) -> list[str]:
    """The lines of a Markdown file's ```bash blocks, continuations joined and comments dropped."""
    lines, language = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language == "bash":
            lines.append(line)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """(script, its arguments) for every invocation of an entry script or the launcher, && chains split."""
    found = []
    for line in code_lines(path):
        for part in line.split("&&"):
            words = shlex.split(part)
            scripts = [i for i, word in enumerate(words) if Path(word).name in PARSED | {"submit.py"}]
            if scripts:
                found.append((Path(words[scripts[0]]).name, words[scripts[0] + 1 :]))
    return found


def parse(script: str, argv: list[str]) -> argparse.Namespace:
    if script == "submit.py":  # the launcher's flags, then the script's after `--`
        split = argv.index("--") if "--" in argv else len(argv)
        launcher = launcher_parser().parse_args(argv[:split])
        return parse(launcher.script, argv[split + 1 :])
    module = load_script(script)
    parser = script_parser(module) if hasattr(module, "get_args_parser") else None
    assert parser is not None, f"{script} has no get_args_parser()"
    return parser.parse_args(argv)


ALL = [(path.name, script, argv) for path in DOCUMENTS for script, argv in commands(path)]


def test_the_docs_hold_commands_to_check():
    scripts = {script for _, script, _ in ALL}
    assert {"main_deepcluster.py", "main_deepclusterv2.py", "eval_linear.py", "eval_svm.py"} <= scripts
    assert "submit.py" in scripts


@pytest.mark.parametrize(("document", "script", "argv"), ALL, ids=[f"{d}:{s}:{i}" for i, (d, s, _) in enumerate(ALL)])
def test_documented_command_parses(document, script, argv):
    try:
        parse(script, argv)
    except SystemExit as error:  # argparse's exit on an unknown flag or a bad value
        pytest.fail(f"{document}: `{script} {' '.join(argv)}` does not parse ({error})")


def test_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "@inproceedings{caron2018deep" in readme and "@inproceedings{caron2020unsupervised" in readme
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"the README does not point at docs/{page.name}"


PROCESS_WORDS = re.compile(
    r"\b(this|the|an?) (issue|task|session)s?\b|\bissue [0-9]+|this version|until this|was (fixed|found)|"
    r"commit [0-9a-f]{7}|at commit|honest figures|tried and not kept|not tried for lack|: not met|\*\*met\*\*|"
    r"before the default became|the seed page|sized for [0-9]+ minutes",
    re.IGNORECASE,
)


@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_user_text_says_what_the_code_does_not_how_it_came_to_be(path):
    hits = sorted({m.group(0) for m in PROCESS_WORDS.finditer(path.read_text())})
    assert not hits, f"{path.name}: {hits}"
