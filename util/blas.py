"""faiss-cpu's own OpenBLAS: pick its kernels from the CPU before it loads, and say which ones it runs.

faiss-cpu's wheel bundles OpenBLAS 0.3.15, which does not recognise CPUs newer than it (AVX-512 with AMX, Zen 4)
and then runs older kernels: measured on such machines, the generic "Prescott" kernels (100k x 256 k-means,
k=1000, 20 iterations: 24 s, against 5.0 s with the SkylakeX kernels) or the AVX2 "Zen" ones. OpenBLAS reads
OPENBLAS_CORETYPE when the library loads, so it has to be set before the first `import faiss`; numpy and torch
carry their own BLAS, already loaded and unaffected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("deepcluster")

AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}  # what OpenBLAS's SkylakeX kernels use
AVX2 = {"avx2", "fma"}  # Haswell kernels
_CHECKED: list[bool] = []  # import_faiss has loaded and checked faiss in this process


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of the first CPU (empty where /proc/cpuinfo does not exist)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def coretype_for(flags: set[str]) -> str | None:
    """The OpenBLAS kernel family these flags allow: SKYLAKEX with AVX-512, HASWELL with AVX2 + FMA, else None
    (OpenBLAS's own detection is then as good as any choice)."""
    if AVX512 <= flags:
        return "SKYLAKEX"
    if AVX2 <= flags:
        return "HASWELL"
    return None


def import_faiss():
    """`import faiss` with its OpenBLAS on the best kernels for this CPU (OPENBLAS_CORETYPE set for the load only,
    unless the user set it), then checked: a warning names the kernels when they are still the generic ones."""
    import sys

    if _CHECKED:
        return sys.modules["faiss"]
    if "faiss" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ:
        coretype = coretype_for(cpu_flags())
        if coretype:
            os.environ["OPENBLAS_CORETYPE"] = coretype
            try:
                import faiss  # loads its OpenBLAS with the variable set
            finally:
                del os.environ["OPENBLAS_CORETYPE"]
    import faiss

    _CHECKED.append(True)
    kernels = faiss_blas_kernels()
    if kernels == "Prescott" and coretype_for(cpu_flags()):
        logger.warning(
            "faiss's bundled OpenBLAS runs its generic Prescott kernels on this CPU (k-means several times slower): "
            "set OPENBLAS_CORETYPE=%s before anything imports faiss, or use --kmeans-backend torch",
            coretype_for(cpu_flags()),
        )
    return faiss


def faiss_blas_kernels() -> str | None:
    """The kernel family ('SkylakeX', 'Haswell', 'Prescott', ...) of the OpenBLAS that faiss loaded, as
    threadpoolctl reports it; None when faiss is not loaded or links another BLAS."""
    from threadpoolctl import threadpool_info

    for library in threadpool_info():
        if library.get("internal_api") == "openblas" and "faiss" in library.get("filepath", ""):
            return library.get("architecture")
    return None


def blas_kernels() -> dict[str, str]:
    """Every loaded BLAS library (file name -> kernel family), for benchmark tables."""
    from threadpoolctl import threadpool_info

    return {
        Path(library["filepath"]).name: str(library.get("architecture"))
        for library in threadpool_info()
        if library.get("user_api") == "blas"
    }
