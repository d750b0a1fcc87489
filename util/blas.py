"""faiss-cpu's own OpenBLAS: pick its kernels from the CPU before it loads, and say which ones it runs.

faiss-cpu's wheel bundles OpenBLAS 0.3.15, which does not recognise CPUs newer than it and then runs older kernels:
on an Intel CPU with AVX-512 and AMX the generic "Prescott" kernels (100k x 256 k-means, k=1000, 20 iterations: 24 s,
against 5.0 s with the SkylakeX kernels); on an AMD Zen 4 its AVX2 "Zen" kernels, which measured faster there than
SkylakeX (so AMD CPUs are left to OpenBLAS's own detection). OpenBLAS reads
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


def _cpuinfo_field(name: str, cpuinfo: Path) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of the first CPU (empty where /proc/cpuinfo does not exist)."""
    return set(_cpuinfo_field("flags", cpuinfo).split())


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """GenuineIntel, AuthenticAMD, ... ('' where unknown)."""
    return _cpuinfo_field("vendor_id", cpuinfo)


def coretype_for(flags: set[str], vendor: str = "GenuineIntel") -> str | None:
    """The OpenBLAS kernels to ask for on this CPU, or None to leave OpenBLAS's own detection: on Intel CPUs,
    SKYLAKEX with AVX-512, HASWELL with AVX2 + FMA (the CPUs OpenBLAS 0.3.15 does not know fall back to Prescott
    there); on AMD CPUs None (0.3.15 detects Zen, and its Zen kernels were measured faster than SkylakeX on a Zen 4
    with AVX-512: 61 s vs 71 s for a 1M x 256, k=10,000 k-means iteration)."""
    if vendor != "GenuineIntel":
        return None
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
        coretype = coretype_for(cpu_flags(), cpu_vendor())
        if coretype:
            os.environ["OPENBLAS_CORETYPE"] = coretype
            try:
                import faiss  # loads its OpenBLAS with the variable set
            finally:
                del os.environ["OPENBLAS_CORETYPE"]
    import faiss

    _CHECKED.append(True)
    kernels = faiss_blas_kernels()
    if kernels == "Prescott" and AVX2 <= cpu_flags():
        logger.warning(
            "faiss's bundled OpenBLAS runs its generic Prescott kernels on this AVX2 CPU (k-means several times "
            "slower): set OPENBLAS_CORETYPE=%s before anything imports faiss, or use --kmeans-backend torch",
            "SKYLAKEX" if AVX512 <= cpu_flags() else "HASWELL",
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
