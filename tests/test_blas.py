"""faiss's bundled OpenBLAS runs the kernels this CPU allows (set before faiss loads), whatever the CPU."""

from __future__ import annotations

import json
import subprocess

from tests.helpers import PYTHON, REPO
from util.blas import coretype_for


def test_coretype_follows_the_cpu_flags_and_vendor():
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx2", "fma"}
    assert coretype_for(avx512, "GenuineIntel") == "SKYLAKEX"
    assert coretype_for({"avx512f", "avx2", "fma"}, "GenuineIntel") == "HASWELL"  # no BW/DQ/VL: not SkylakeX
    assert coretype_for({"sse4_2"}, "GenuineIntel") is None
    assert coretype_for(avx512, "AuthenticAMD") is None  # OpenBLAS's own Zen detection, measured faster


def test_faiss_loads_with_the_kernels_the_cpu_allows_and_leaves_the_environment_alone():
    """In a fresh process (faiss not yet loaded): the kernels threadpoolctl reports for faiss's OpenBLAS are the
    family the CPU's flags allow (when OPENBLAS_CORETYPE is not set by the user), and the variable is not left set
    for libraries loaded later."""
    code = (
        "import json, os; from util.blas import coretype_for, cpu_flags, cpu_vendor, faiss_blas_kernels, import_faiss;"
        " import_faiss(); print(json.dumps([coretype_for(cpu_flags(), cpu_vendor()), faiss_blas_kernels(), "
        "'OPENBLAS_CORETYPE' in os.environ]))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    wanted, kernels, left_set = json.loads(out.stdout)
    assert not left_set
    if kernels is not None:  # faiss linked with OpenBLAS (the faiss-cpu wheel)
        expected = {"SKYLAKEX": "SkylakeX", "HASWELL": "Haswell"}.get(wanted)
        assert expected is None or kernels == expected, (wanted, kernels)
