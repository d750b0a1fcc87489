"""Run many command lines of the entry scripts in ONE Python process (the bad-input matrix: torch is imported once,
not once per case), each exactly as `python SCRIPT ARGS` runs it: the script's `__main__` block with sys.argv set,
its own environment overrides, stderr captured. Reads a JSON list of {"script", "args", "env"} on stdin; prints a
JSON list of {"code", "stderr", "stdout"}."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_case(script: str, args: list[str], env: dict[str, str]) -> dict:
    saved_env, saved_argv, saved_path = dict(os.environ), sys.argv, list(sys.path)
    os.environ.update(env)
    sys.argv = [str(REPO / script), *args]
    sys.path.insert(0, str((REPO / script).parent))
    logging.getLogger("deepcluster").handlers.clear()  # each case binds its handlers to its own stderr
    stderr, stdout = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException as error:  # noqa: BLE001 (an uncaught exception is what the matrix must catch)
        code, stderr = 1, io.StringIO(stderr.getvalue() + f"Traceback (uncaught): {type(error).__name__}: {error}\n")
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.path[:] = saved_argv, saved_path
    return {"code": code, "stderr": stderr.getvalue(), "stdout": stdout.getvalue()}


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    print(json.dumps([run_case(c["script"], c["args"], c.get("env", {})) for c in cases]))
