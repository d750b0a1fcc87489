"""Start-up of every entry script: its parser and error handling (script_entry, run_main), device, seeds,
determinism, the output folder."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from util.abort import share_failure
from util.checkpoint import remove_stale_temporaries
from util.config import add_config_arg, parse_with_config
from util.dist import DEFAULT_TIMEOUT_MIN, DistInfo, init_distributed
from util.errors import EXIT_USER_ERROR, UserError, failure_line
from util.logging import setup_logging

logger = logging.getLogger("deepcluster")


def resolve_device(requested: str | None, info: DistInfo) -> torch.device:
    """--device, else cuda when available; distributed CUDA runs use cuda:LOCAL_RANK."""
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but CUDA is not available here: use --device cpu")
        if info.distributed or name == "cuda":
            return torch.device(
                "cuda",
                info.local_rank if info.distributed else torch.cuda.current_device(),
            )
    elif name != "cpu":
        raise UserError(f"--device {name} is not understood: use cpu, cuda or cuda:N")
    return torch.device(name)


def fix_cpu_threads() -> None:
    """The CPU's thread counts held fixed for the whole run, so that every matrix product splits its sums the same
    way whatever else the machine runs: torch's intra-op threads pinned at their count now, OpenMP's dynamic
    adjustment off (for DataLoader workers and child processes too), and MKL's (the BLAS of torch's x86 wheels)
    dynamic choice of fewer threads off."""
    torch.set_num_threads(torch.get_num_threads())
    os.environ["OMP_DYNAMIC"] = "FALSE"
    os.environ["MKL_DYNAMIC"] = "FALSE"
    try:
        import ctypes

        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        library.mkl_set_dynamic_(ctypes.byref(ctypes.c_int(0)))  # the Fortran entry point: its flag by reference
    except (OSError, AttributeError):  # a torch without MKL (aarch64, macOS): nothing to fix there
        pass


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        fix_cpu_threads()
    else:
        torch.backends.cudnn.benchmark = True


def prepare_output_dir(path: str, is_main: bool) -> Path:
    """Create the output folder and prove it is writable before any work is done."""
    out = Path(path).expanduser()
    if not is_main:
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file, not a folder: choose another path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        remove_stale_temporaries(out)  # of a run killed inside an atomic write
    except OSError as err:
        raise UserError(
            f"--output-dir {out} is not writable ({err.strerror}): choose a folder you can write to"
        ) from err
    return out


def start_run(
    device: str | None, seed: int, deterministic: bool, output_dir: str, dist_timeout: float = DEFAULT_TIMEOUT_MIN
) -> tuple[DistInfo, torch.device, Path]:
    """The start of every entry script: process group, rank-filtered logging, device, seeds, writable output folder."""
    if dist_timeout <= 0:
        raise UserError(f"--dist-timeout {dist_timeout} must be positive (minutes)")
    info = init_distributed(device or ("cuda" if torch.cuda.is_available() else "cpu"), dist_timeout)
    setup_logging(info.rank)
    resolved = resolve_device(device, info)
    seed_everything(seed, deterministic)
    return info, resolved, prepare_output_dir(output_dir, info.is_main)


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; a UserError (also one raised in a data worker) exits 2 with one line."""
    logger = logging.getLogger("deepcluster")
    if not logger.handlers:  # errors raised before the script set up its logging still get printed
        logger.addHandler(logging.StreamHandler(sys.stderr))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        main()
    except Exception as err:
        status, line = failure_line(err)
        share_failure(status, line)  # every other rank of a distributed run ends with this line too
        if status != EXIT_USER_ERROR:
            raise
        logger.error("error: %s", line)
        sys.exit(EXIT_USER_ERROR)


def script_entry(
    title: str,
    get_args_parser: Callable[[], argparse.ArgumentParser],
    main: Callable[[argparse.Namespace], object],
    epilog: str,
) -> None:
    """The `if __name__ == "__main__"` of every entry script: its parser (with --help and the departures from the
    paper or protocol as epilog), then main() under run_main."""
    parser = argparse.ArgumentParser(
        title, parents=[get_args_parser()], epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arg(parser)
    run_main(lambda: main(parse_with_config(parser, sys.argv[1:])))
