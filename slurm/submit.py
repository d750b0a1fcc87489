"""Submit any entry script to SLURM (or run it locally) through submitit.

    python slurm/submit.py SCRIPT [launcher flags] -- [script flags]

    python slurm/submit.py main_deepcluster.py --nodes 2 --gpus-per-node 8 --partition P \\
        --timeout-min 4320 -- --data /datasets/imagenet/train --arch resnet50 --sobel --output-dir runs/seed-r50
    python slurm/submit.py eval_linear.py --gpus-per-node 1 --sweep lr=0.01,0.03,0.1 \\
        -- --pretrained runs/seed-r50/checkpoint.pth --data /datasets/imagenet --output-dir runs/lin

The script's own flags are parsed (and rejected) here, before anything is submitted. On a timeout or preemption the
job requeues itself and the script resumes from the checkpoint in its --output-dir.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import submitit

from slurm.job import REPO_ROOT, SCRIPTS, ScriptJob, load_script, script_parser
from util.config import parse_with_config
from util.errors import UserError
from util.runtime import run_main


def launcher_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "slurm/submit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("script", choices=SCRIPTS, help="the entry script to run")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--tasks-per-node", type=int, default=None, help="default: one per GPU, or 1 without GPUs")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="default: 10 with GPUs, else 1")
    parser.add_argument("--mem-gb", type=int, default=None, help="memory per node (default: 32 GB per GPU, else 4)")
    parser.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    parser.add_argument("--constraint", default=None, help="SLURM --constraint, e.g. volta32gb")
    parser.add_argument("--account", default=None)
    parser.add_argument("--qos", default=None)
    parser.add_argument("--timeout-min", type=int, default=60, help="time limit of each run of the job")
    parser.add_argument("--max-requeues", type=int, default=20, help="requeues allowed on timeout/preemption")
    parser.add_argument("--job-dir", default="slurm_jobs/%j", help="submitit folder for logs and pickles (%%j: job id)")
    parser.add_argument("--name", default=None, help="job name (default: the script name)")
    parser.add_argument(
        "--sweep",
        action="append",
        default=None,
        metavar="NAME=V1,V2,...",
        help="one array element per value of script flag --NAME; each writes to OUTPUT_DIR/NAME=V. Repeat it for a "
        "grid (every combination; OUTPUT_DIR/NAME1=V1+NAME2=V2); sweep_best.py picks the best element",
    )
    parser.add_argument(
        "--cluster",
        choices=("auto", "slurm", "local"),
        default="auto",
        help="auto: SLURM when sbatch is on PATH, else local processes",
    )
    parser.add_argument("--wait", action="store_true", help="block until every job ends; exit 1 if one failed")
    parser.add_argument("--dry-run", action="store_true", help="check every flag and print the jobs; submit nothing")
    return parser


def check_resources(opts: argparse.Namespace) -> None:
    """Counts that sbatch would reject later, or accept with a surprise, refused now."""
    for flag, value, least in (
        ("--nodes", opts.nodes, 1),
        ("--gpus-per-node", opts.gpus_per_node, 0),
        ("--tasks-per-node", opts.tasks_per_node, 1),
        ("--cpus-per-task", opts.cpus_per_task, 1),
        ("--mem-gb", opts.mem_gb, 1),
        ("--timeout-min", opts.timeout_min, 1),
        ("--max-requeues", opts.max_requeues, 0),
    ):
        if value is not None and value < least:
            raise UserError(f"{flag} {value}: must be at least {least}")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def make_executor(opts: argparse.Namespace) -> submitit.AutoExecutor:
    cluster = None if opts.cluster == "auto" else opts.cluster
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--cluster slurm but sbatch was not found on PATH: load Slurm or use --cluster local")
    executor = submitit.AutoExecutor(folder=opts.job_dir, cluster=cluster, slurm_max_num_timeout=opts.max_requeues)
    gpus = opts.gpus_per_node
    tasks = opts.tasks_per_node or max(1, gpus)
    additional = {k: v for k, v in (("constraint", opts.constraint), ("account", opts.account), ("qos", opts.qos)) if v}
    executor.update_parameters(
        name=opts.name or Path(opts.script).stem,
        nodes=opts.nodes,
        tasks_per_node=tasks,
        gpus_per_node=gpus,
        cpus_per_task=opts.cpus_per_task or (10 if gpus else 1),
        mem_gb=opts.mem_gb or (32 * gpus if gpus else 4),
        timeout_min=opts.timeout_min,
        slurm_partition=opts.partition,
        slurm_signal_delay_s=120,
        slurm_additional_parameters=additional,
        slurm_srun_args=["--kill-on-bad-exit=1"],  # a task that fails ends the job's other tasks
        slurm_setup=[f"export PYTHONPATH={REPO_ROOT}:${{PYTHONPATH:-}}"],
    )
    return executor


def sweep_argvs(script_args: argparse.Namespace, argv: list[str], sweeps: list[str] | None) -> list[list[str]]:
    """One argv per combination of the sweeps' values: each flag set to its value and --output-dir suffixed with
    NAME=VALUE (joined by + for a grid)."""
    if not sweeps:
        return [argv]
    axes = []
    for sweep in sweeps:
        if "=" not in sweep:
            raise UserError(f"--sweep {sweep!r} must read NAME=V1,V2,... (e.g. lr=0.01,0.1)")
        name, values = sweep.split("=", 1)
        if not hasattr(script_args, name.replace("-", "_")):
            raise UserError(f"--sweep {name}: the script has no flag --{name.replace('_', '-')}")
        axes.append([(name, value) for value in values.split(",") if value])
        if not axes[-1]:
            raise UserError(f"--sweep {sweep!r} lists no value: write NAME=V1,V2,...")
    base = Path(script_args.output_dir)
    argvs = []
    for combination in itertools.product(*axes):
        flags = [item for name, value in combination for item in ("--" + name.replace("_", "-"), value)]
        folder = "+".join(f"{name}={value}" for name, value in combination)
        argvs.append([*argv, *flags, "--output-dir", str(base / folder)])
    return argvs


def main(argv: list[str] | None = None) -> int:
    launcher_argv, script_argv = split_argv(sys.argv[1:] if argv is None else argv)
    opts = launcher_parser().parse_args(launcher_argv)
    check_resources(opts)
    module = load_script(opts.script)
    parser = script_parser(module)
    script_args = parse_with_config(parser, script_argv)  # rejects bad script flags before submitting
    argvs = sweep_argvs(script_args, script_argv, opts.sweep)
    for one in argvs:
        parse_with_config(parser, one)
    if opts.dry_run:
        for one in argvs:
            print(f"would submit {opts.script} {' '.join(one)} on {opts.nodes} node(s)", flush=True)
        return 0
    executor = make_executor(opts)
    try:
        if len(argvs) > 1:
            with executor.batch():
                jobs = [executor.submit(ScriptJob(opts.script, one)) for one in argvs]
        else:
            jobs = [executor.submit(ScriptJob(opts.script, argvs[0]))]
    except UserError:
        raise
    except Exception as err:  # sbatch's own failure (no config, bad partition, ...): one line
        reason = " ".join(str(err).split())[:300]
        raise UserError(
            f"submission failed ({type(err).__name__}: {reason}): check the partition and that "
            "sinfo works here (SLURM_CONF), or use --cluster local"
        ) from err
    for job, one in zip(jobs, argvs, strict=True):
        print(f"submitted {opts.script} as job {job.job_id}; logs: {job.paths.stdout}", flush=True)
        print(f"  output: {parse_with_config(parser, one).output_dir}", flush=True)
    if not opts.wait:
        return 0
    failed = 0
    for job in jobs:
        try:
            job.results()
            print(f"job {job.job_id} finished", flush=True)
        except Exception as err:  # noqa: BLE001 - FailedJobError, UncompletedJobError: report and go on
            failed += 1
            print(f"job {job.job_id} failed: {err}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(lambda: sys.exit(main()))
