"""The bad-input matrix: over the three scripts and the launcher, every case is one line (what is wrong, how to fix
it), exit code 2, no traceback, and nothing in the output folder created or changed. All cases run in one Python
process (tests/run_cases.py: each exactly as `python SCRIPT ARGS`, with its own environment), so torch is imported
once. test_bad_inputs.py holds the cases that need a run to get somewhere first (a NaN loss mid-training, a
checkpoint of another architecture, an unreadable image in a DataLoader worker)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.helpers import TINY_PRETRAIN, make_voc, run_in_one_process

pytestmark = pytest.mark.slow

TINY = [*TINY_PRETRAIN, "--workers", "0", "--epochs", "1"]
EVAL = ["--image-size", "32", "--workers", "0"]
TINY_V2 = (
    "--arch resnet18 --image-size 32 --nmb-crops 2 --size-crops 32 --min-scale-crops 0.2 --max-scale-crops 1 "
    "--nmb-prototypes 8 --batch-size 16 --workers 0 --epochs 1"
).split()
V2 = "main_deepclusterv2.py"


def cases(data: dict[str, Path], out: Path) -> list[tuple[str, str, list[str], dict, list[str]]]:
    """(name, script, args, environment, fragments the error line must hold)."""
    tiny, split, voc = str(data["tiny"]), str(data["split"]), data["voc"]
    pre = ["--data", tiny, *TINY, "--output-dir", str(out)]
    lin = ["--pretrained", "random", "--arch", "resnet18", "--data", split, *EVAL, "--output-dir", str(out)]
    svm = [*lin[:4], "--data", split, *EVAL, "--output-dir", str(out)]
    sub = ["slurm/submit.py", "main_deepcluster.py"]
    v2 = ["--data", tiny, *TINY_V2, "--output-dir", str(out)]
    return [
        # main_deepcluster.py
        ("data is a file", "main_deepcluster.py", [*pre, "--data", str(data["file"])], {}, ["is not a folder"]),
        ("data missing", "main_deepcluster.py", [*pre, "--data", str(out / "nope")], {}, ["does not exist"]),
        ("data empty", "main_deepcluster.py", [*pre, "--data", str(data["empty"])], {}, ["holds no images"]),
        ("k = 1", "main_deepcluster.py", [*pre, "--k", "1"], {}, ["--k 1 is too small"]),
        ("k > images", "main_deepcluster.py", [*pre, "--k", "500"], {}, ["--k 500 is larger than the 90 images"]),
        ("pca-dim > images", "main_deepcluster.py", [*pre, "--pca-dim", "256"], {}, ["too few for --pca-dim 256"]),
        ("batch > images", "main_deepcluster.py", [*pre, "--batch-size", "500"], {}, ["--batch-size 500", "90"]),
        ("unknown device", "main_deepcluster.py", [*pre, "--device", "tpu"], {}, ["--device tpu", "cuda:N"]),
        (
            "alexnet on 32 px",
            "main_deepcluster.py",
            [*pre, "--arch", "alexnet", "--image-size", "32"],
            {},
            ["--image-size 63"],
        ),
        (
            "vgg16 on 16 px",
            "main_deepcluster.py",
            [*pre, "--arch", "vgg16", "--image-size", "16"],
            {},
            ["--arch vgg16 cannot run on 16 px", "--image-size"],
        ),
        (
            "damaged checkpoint",
            "main_deepcluster.py",
            [*pre, "--resume", str(data["damaged"])],
            {},
            ["damaged or not a checkpoint"],
        ),
        ("resume missing", "main_deepcluster.py", [*pre, "--resume", str(out / "none.pth")], {}, ["does not exist"]),
        (
            "partial SLURM env",
            "main_deepcluster.py",
            pre,
            {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"},
            ["partial SLURM environment", "SLURM_LOCALID"],
        ),
        (
            "partial torchrun env",
            "main_deepcluster.py",
            pre,
            {"RANK": "0", "WORLD_SIZE": "2"},
            ["partial torchrun environment", "MASTER_ADDR"],
        ),
        (
            "PIC too few images",
            "main_deepcluster.py",
            [*pre, "--data", str(data["few"]), "--clustering", "pic", "--pca-dim", "2", "--batch-size", "2"],
            {},
            ["PIC needs more than --pic-neighbors 5 images", "--pic-neighbors"],
        ),
        ("lr zero", "main_deepcluster.py", [*pre, "--lr", "0"], {}, ["must be positive"]),
        ("negative epochs", "main_deepcluster.py", [*pre, "--epochs", "-1"], {}, ["--epochs", "positive"]),
        ("sync-bn on cpu", "main_deepcluster.py", [*pre, "--sync-bn"], {}, ["--sync-bn needs CUDA"]),
        ("output is a file", "main_deepcluster.py", [*pre, "--output-dir", str(data["file"])], {}, ["is a file"]),
        # main_deepclusterv2.py
        (
            "v2 prototypes > bank",
            V2,
            [*v2, "--nmb-prototypes", "500"],
            {},
            ["holds 80 images", "lower --nmb-prototypes"],
        ),
        ("v2 crop lists", V2, [*v2, "--nmb-crops", "2", "6", "--size-crops", "32"], {}, ["one value per resolution"]),
        ("v2 assign crop", V2, [*v2, "--crops-for-assign", "0", "5"], {}, ["--crops-for-assign [0, 5]", "0..1"]),
        ("v2 crop scale", V2, [*v2, "--min-scale-crops", "0"], {}, ["--min-scale-crops"]),
        ("v2 batch > images", V2, [*v2, "--batch-size", "500"], {}, ["--batch-size 500", "lower --batch-size"]),
        ("v2 temperature", V2, [*v2, "--temperature", "0"], {}, ["--temperature 0.0 must be positive"]),
        ("v2 labels, few protos", V2, [*v2, "--labels-from", "dataset", "--nmb-prototypes", "2"], {}, ["3 classes"]),
        (
            "v2 resumes v1",
            V2,
            [*v2, "--resume", str(data["checkpoint"])],
            {},
            ["not a main_deepclusterv2.py checkpoint"],
        ),
        # eval_linear.py
        (
            "random without arch",
            "eval_linear.py",
            [a for a in lin if a not in ("--arch", "resnet18")],
            {},
            ["--pretrained random needs --arch"],
        ),
        ("pretrained missing", "eval_linear.py", [*lin, "--pretrained", str(out / "x.pth")], {}, ["does not exist"]),
        (
            "pretrained damaged",
            "eval_linear.py",
            [*lin, "--pretrained", str(data["damaged"])],
            {},
            ["damaged or not a checkpoint"],
        ),
        (
            "sobel mismatch",
            "eval_linear.py",
            [*lin, "--pretrained", str(data["checkpoint"]), "--sobel"],
            {},
            ["trained with sobel=False", "drop --sobel"],
        ),
        ("no val folder", "eval_linear.py", [*lin, "--data", tiny], {}, ["needs train/ and val/ (or test/)"]),
        (
            "NaN probe loss",
            "eval_linear.py",
            [
                *lin,
                "--protocol",
                "multihead",
                "--lr",
                "1e38",
                "--epochs",
                "3",
                "--batch-size",
                "8",
                "--output-dir",
                str(out.parent / "nan"),
            ],  # fails mid-training: its own folder, W&B log included
            {},
            ["probe loss is nan", "lower --lr"],
        ),
        # eval_svm.py
        ("costs not numbers", "eval_svm.py", [*svm, "--costs", "1,abc"], {}, ["--costs '1,abc'"]),
        ("costs not positive", "eval_svm.py", [*svm, "--costs", "1,-1"], {}, ["--costs", "positive"]),
        (
            "lowshot k zero",
            "eval_svm.py",
            [*svm, "--protocol", "lowshot", "--lowshot-ks", "0,2"],
            {},
            ["--lowshot-ks", "positive"],
        ),
        (
            "lowshot k not integers",
            "eval_svm.py",
            [*svm, "--protocol", "lowshot", "--lowshot-ks", "1,x"],
            {},
            ["--lowshot-ks '1,x'"],
        ),
        ("svm no val folder", "eval_svm.py", [*svm, "--data", tiny], {}, ["neither a VOC2007 folder"]),
        (
            "VOC image missing",
            "eval_svm.py",
            [*svm, "--data", str(voc["no-jpeg"])],
            {},
            ["VOC image", "000007.jpg is missing"],
        ),
        (
            "VOC annotation missing",
            "eval_svm.py",
            [*svm, "--data", str(voc["no-xml"])],
            {},
            ["VOC annotation", "000003.xml is missing"],
        ),
        (
            "VOC unknown class",
            "eval_svm.py",
            [*svm, "--data", str(voc["bad-class"])],
            {},
            ["unknown class 'spaceship'"],
        ),
        (
            "VOC broken XML",
            "eval_svm.py",
            [*svm, "--data", str(voc["broken-xml"])],
            {},
            ["000004.xml is not valid XML"],
        ),
        # slurm/submit.py
        ("sweep without =", *sub[:1], [*sub[1:], "--sweep", "lr", "--", *pre], {}, ["--sweep 'lr' must read NAME="]),
        (
            "sweep unknown flag",
            *sub[:1],
            [*sub[1:], "--sweep", "nosuch=1,2", "--", *pre],
            {},
            ["the script has no flag --nosuch"],
        ),
        ("sweep empty values", *sub[:1], [*sub[1:], "--sweep", "lr=", "--", *pre], {}, ["--sweep 'lr='"]),
        ("nodes zero", *sub[:1], [*sub[1:], "--nodes", "0", "--", *pre], {}, ["--nodes", "at least 1"]),
        (
            "no sbatch",
            *sub[:1],
            [*sub[1:], "--cluster", "slurm", "--", *pre],
            {"PATH": str(data["empty"])},
            ["sbatch", "not found"],
        ),
        ("bad script flags", *sub[:1], [*sub[1:], "--", *pre, "--k", "abc"], {}, ["--k"]),
        # report.py, and the pretraining flags it reads the output of
        ("report: no such source", "report.py", [str(out / "nope")], {}, ["does not exist", "wandb:ENTITY"]),
        ("report: two sources", "report.py", [str(out), str(out)], {}, ["--output-dir"]),
        ("report: no run", "report.py", [str(out), "--output-dir", str(out / "r")], {}, ["holds no log.jsonl"]),
        (
            "cluster images every -1",
            "main_deepcluster.py",
            [*pre, "--cluster-images-every", "-1"],
            {},
            ["--cluster-images-every", "not a non-negative integer"],
        ),
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from tests.helpers import make_image_folder

    root = tmp_path_factory.mktemp("matrix")
    found = {
        "tiny": make_image_folder(root / "tiny", num_classes=3, per_class=30),
        "few": make_image_folder(root / "few", num_classes=2, per_class=2),
        "split": root / "split",
        "file": root / "a-file",
        "damaged": root / "damaged.pth",
        "empty": root / "empty",
    }
    make_image_folder(root / "split" / "train", num_classes=4, per_class=10, seed=1)
    make_image_folder(root / "split" / "val", num_classes=4, per_class=5, seed=2)
    found["file"].write_text("x")
    found["damaged"].write_bytes(b"not a checkpoint")
    (root / "empty" / "cls").mkdir(parents=True)
    voc = {}
    for name in ("no-jpeg", "no-xml", "bad-class", "broken-xml"):
        voc[name] = make_voc(root / name / "VOC2007", per_class_files=name == "no-jpeg", num_train=12, num_test=10)
    (voc["no-jpeg"] / "JPEGImages" / "000007.jpg").unlink()
    (voc["no-xml"] / "Annotations" / "000003.xml").unlink()
    xml = voc["bad-class"] / "Annotations" / "000005.xml"
    xml.write_text("<annotation><object><name>spaceship</name><difficult>0</difficult></object></annotation>")
    (voc["broken-xml"] / "Annotations" / "000004.xml").write_text("<annotation><object>")
    found["voc"] = voc
    import torch

    from models import build_model

    found["checkpoint"] = root / "weights.pth"
    torch.save(
        {"arch": "resnet18", "sobel": False, "backbone": build_model("resnet18", False).state_dict(), "epoch": 1},
        found["checkpoint"],
    )
    return found


def folder_digest(path: Path) -> str:
    if not path.exists():
        return "absent"
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        digest.update(str(item.relative_to(path)).encode())
        if item.is_file():
            digest.update(item.read_bytes())
    return digest.hexdigest()


def test_every_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("a previous run's file")
    table = cases(data, out)
    assert len(table) >= 30
    before = folder_digest(out)
    results = run_in_one_process([(script, args, extra) for _, script, args, extra, _ in table], tmp_path, timeout=900)
    failures = []
    for (name, _, _, _, fragments), result in zip(table, results, strict=True):
        errors = [line for line in result["stderr"].splitlines() if "error:" in line]
        ok = (
            result["code"] == 2
            and len(errors) == 1
            and "Traceback" not in result["stderr"]
            and all(fragment in errors[0] for fragment in fragments)
        )
        if not ok:
            failures.append(f"{name}: exit {result['code']}: {result['stderr'].strip()[-400:]}")
    assert not failures, "\n".join(failures)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert folder_digest(out) == before, f"a failed command wrote into the output folder: {written}"
    shutil.rmtree(out)
