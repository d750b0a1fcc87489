"""Shared test helpers: tiny generated ImageFolder trees, running the scripts, reading W&B runs back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from util.eval.voc import VOC_CLASSES

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# main_deepcluster.py on the tiny folders in seconds: the flags the small-data rule would otherwise choose, and the
# folder read through DataLoader workers as folder data is by default at 224 px
TINY_PRETRAIN = "--arch resnet18 --k 6 --pca-dim 16 --batch-size 16 --reassign 1 --image-size 32 --no-in-memory".split()


def make_image_folder(
    root: Path, num_classes: int = 3, per_class: int = 30, size: int = 32, seed: int = 0, noise: float = 30.0
) -> Path:
    """JPEG images, one folder per class; each class is a distinct colour and stripe orientation plus noise,
    so the classes are easy to separate but not identical within a class."""
    rng = np.random.default_rng(seed)  # the noise; the class look (colour, stripes) is the same for every seed
    palette = np.random.default_rng(1234).uniform(40, 215, size=(num_classes, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(num_classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        stripes = np.sin((xx if c % 2 else yy) * (0.4 + 0.3 * c))[..., None] * 40
        for i in range(per_class):
            img = palette[c] + stripes + rng.normal(0, noise, size=(size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def script_env(tmp: Path) -> dict:
    """An environment that keeps W&B offline and its files, and the data cache, inside tmp."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp / "wandb-home"),
        WANDB_CACHE_DIR=str(tmp / "wandb-home" / "cache"),
        WANDB_DATA_DIR=str(tmp / "wandb-home" / "data"),
        WANDB_CONFIG_DIR=str(tmp / "wandb-home" / "config"),
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
    )
    env.pop("WANDB_API_KEY", None)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)
    return env


def run_script(script: str, args: list[str], tmp: Path, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(REPO / script), *args],
        cwd=REPO,
        env=kwargs.pop("env", None) or script_env(tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wandb_run_dir(output_dir: Path) -> Path:
    runs = sorted((output_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {output_dir / 'wandb'}"
    return runs[-1]


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of an offline run, decoded by wandb's own reader (`wandb leet inspect --json`)."""
    wandb_cli = Path(PYTHON).parent / "wandb"
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]


def wandb_history(run_dir: Path) -> list[dict]:
    return [r["history"]["item"] for r in wandb_records(run_dir) if r.get("type") == "history"]


def wandb_summary(run_dir: Path) -> dict:
    wandb_cli = Path(PYTHON).parent / "wandb"
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def make_voc(root, per_class_files=True, num_train=12, num_test=10):
    """A tiny VOCdevkit/VOC2007 layout with real JPEGs, annotations and difficult flags."""
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations").mkdir()
    rng = np.random.default_rng(0)
    splits = {
        "trainval": [f"{i:06d}" for i in range(num_train)],
        "test": [f"{i:06d}" for i in range(100, 100 + num_test)],
    }
    truth = {}
    for ids in splits.values():
        for n, image_id in enumerate(ids):
            cls = n % 3  # classes 0..2 only: aeroplane, bicycle, bird
            difficult = n % 5 == 4
            colour = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]][cls]) + rng.normal(0, 10, (40, 40, 3))
            Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
            xml = (
                f"<annotation><object><name>{VOC_CLASSES[cls]}</name><difficult>{int(difficult)}</difficult>"
                "</object></annotation>"
            )
            (root / "Annotations" / f"{image_id}.xml").write_text(xml)
            truth[image_id] = (cls, difficult)
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("\n".join(ids) + "\n")
        if per_class_files:
            for c, name in enumerate(VOC_CLASSES):
                lines = [
                    f"{i} {0 if truth[i][1] and truth[i][0] == c else (1 if truth[i][0] == c else -1)}" for i in ids
                ]
                (main / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_resnet18(data: Path) -> list[str]:
    """The evaluation scripts' flags for the random-init ResNet-18 on `data`."""
    return ["--pretrained", "random", "--arch", "resnet18", "--data", str(data)]


def run_in_one_process(cases: list[tuple], tmp: Path, timeout: int = 600) -> list[dict]:
    """Run several command lines of the entry scripts in one Python process (tests/run_cases.py: torch imported
    once), each (script, args) or (script, args, extra environment) as `python SCRIPT ARGS` with script_env(tmp);
    returns [{"code", "stderr", "stdout"}] in order."""
    payload = [{"script": case[0], "args": case[1], "env": case[2] if len(case) > 2 else {}} for case in cases]
    proc = subprocess.run(
        [PYTHON, str(REPO / "tests" / "run_cases.py")],
        input=json.dumps(payload),
        cwd=REPO,
        env=script_env(tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_user_error(proc, *fragments) -> None:
    """Exit code 2, exactly one `error:` line holding every fragment, no traceback."""
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
