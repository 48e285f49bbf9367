"""Accuracy on real patients, side by side with the stock MONAI anchor on the same held-out fold.

The anchor (``../shared/anchors/stock_monai_recipe.py``) holds out fold ``k`` of ``n`` of the fully
contoured dataset: the cases at positions ``k, k+n, ...`` of the case ids sorted by name. This
script builds the training view medunet is allowed to use -- every case of a (possibly partially
contoured, larger) training dataset except the held-out fold's patients -- as a Decathlon folder of
symbolic links plus a filtered ``dataset.json`` (``annotated`` kept), trains the ct_organs bundle on it
with the given overrides, predicts the fold's images with ``medunet predict`` (variants: TTA,
post-processing) and scores every variant with the anchor's independent scorer
(``score_masks.py --only-predicted``).

usage:
  python -m benchmarks.real_accuracy prepare --heldout ../shared/data/openkbp_hn_ct \\
      --train ../shared/data/openkbp_hn_ct_partial --fold 0 --folds 5 --out /tmp/exp/f0
  python -m benchmarks.real_accuracy train --work /tmp/exp/f0 --name default -- --time_budget_min 25
  python -m benchmarks.real_accuracy predict --work /tmp/exp/f0 --name default [--variants all]
  python -m benchmarks.real_accuracy score --work /tmp/exp/f0 --pred /tmp/exp/stock_f0 --name stock

Nothing is tuned on the held-out fold: medunet validates (and picks post-processing) on its own
validation cases from the training view only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("real_accuracy")

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors"


def fold_cases(dataset_dir: Path, fold: int, folds: int) -> list[dict[str, str]]:
    """The anchor's fold rule: sort the entries by label file name, take positions fold, fold+folds, ..."""
    d = json.loads((dataset_dir / "dataset.json").read_text())
    entries = sorted(d["training"], key=lambda e: os.path.basename(e["label"]))
    return entries[fold::folds]


def case_id(entry: dict[str, str]) -> str:
    return os.path.basename(entry["label"]).split(".")[0]


def prepare(heldout: Path, train: Path, fold: int, folds: int, out: Path, only_heldout_dataset: bool) -> None:
    held = fold_cases(heldout, fold, folds)
    held_ids = {case_id(e) for e in held}
    source = heldout if only_heldout_dataset else train
    d = json.loads((source / "dataset.json").read_text())
    keep = [e for e in d["training"] if case_id(e) not in held_ids]
    view = out / ("train_view_heldout_only" if only_heldout_dataset else "train_view")
    for sub in ("imagesTr", "labelsTr"):
        (view / sub).mkdir(parents=True, exist_ok=True)
    for e in keep:
        for key in ("image", "label"):
            link = view / e[key]
            if not link.exists():
                link.symlink_to((source / e[key]).resolve())
    d = {**d, "training": keep, "numTraining": len(keep)}
    (view / "dataset.json").write_text(json.dumps(d, indent=1))
    images = out / "heldout_images"
    images.mkdir(parents=True, exist_ok=True)
    for e in held:
        link = images / os.path.basename(e["image"])
        if not link.exists():
            link.symlink_to((heldout / e["image"]).resolve())
    meta = {
        "fold": fold,
        "folds": folds,
        "heldout": sorted(held_ids),
        "train_cases": len(keep),
        "train_source": str(source),
        "labels": json.loads((heldout / "dataset.json").read_text())["labels"],
        "heldout_labels": str((heldout / "labelsTr").resolve()),
    }
    (out / "fold.json").write_text(json.dumps(meta, indent=1))
    logger.info(
        "fold %d/%d: %d held-out cases, %d training cases in %s", fold, folds, len(held), len(keep), view
    )


def run(cmd: list[str], log: Path) -> float:
    logger.info("$ %s", " ".join(cmd))
    t0 = time.time()
    with log.open("w") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.time() - t0


def train(work: Path, name: str, overrides: list[str], heldout_only: bool) -> None:
    view = work / ("train_view_heldout_only" if heldout_only else "train_view")
    out = work / "runs" / name
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "bundles/ct_organs/train.json",
        "--dataset_dir",
        str(view),
        "--output_dir",
        str(out),
        *overrides,
    ]
    out.mkdir(parents=True, exist_ok=True)
    wall = run(cmd, work / f"train_{name}.log")
    (out / "wall.json").write_text(json.dumps({"wall_s": wall, "overrides": overrides}))
    logger.info("%s trained in %.1f min", name, wall / 60)


VARIANTS = {
    "default": [],
    "no_tta": ["--no-tta"],
    "no_tta_no_postprocess": ["--no-tta", "--no-postprocess"],
    "no_postprocess": ["--no-postprocess"],
    "nearest_labels": ["--resample-labels"],
    # the default is --engine auto: OpenVINO on a CPU without native bf16, PyTorch bf16 on one with it
    "torch_engine": ["--engine", "torch"],
    "fp32": ["--engine", "torch", "--precision", "fp32"],
    "openvino": ["--engine", "openvino"],
}


def predict(work: Path, name: str, variants: list[str], checkpoints: list[str] | None) -> None:
    ckpts = checkpoints or [str(work / "runs" / name / "best.pt")]
    for variant in variants:
        out = work / "pred" / f"{name}__{variant}"
        cmd = [
            str(Path(sys.executable).parent / "medunet"),
            "predict",
            "--input",
            str(work / "heldout_images"),
            "--output",
            str(out),
            "--checkpoint",
            *ckpts,
            *VARIANTS[variant],
        ]
        wall = run(cmd, work / f"predict_{name}__{variant}.log")
        logger.info("%s/%s predicted in %.1f s", name, variant, wall)
        score(work, out, f"{name}__{variant}")


def score(work: Path, pred: Path, name: str) -> dict:
    meta = json.loads((work / "fold.json").read_text())
    labels = meta["labels"]
    names = ",".join(labels[str(k)] for k in range(1, len(labels)))
    cmd = [
        sys.executable,
        str(ANCHORS / "score_masks.py"),
        str(pred),
        meta["heldout_labels"],
        str(len(labels)),
        "--names",
        names,
        "--only-predicted",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    (work / "scores").mkdir(exist_ok=True)
    (work / "scores" / f"{name}.json").write_text(json.dumps(result, indent=1))
    logger.info("%s: mean Dice %.3f, mean HD95 %s mm", name, result["mean_dice"], result["mean_hd95"])
    return result


def report(work: Path, names: list[str]) -> str:
    """A markdown table (per organ Dice / HD95 mm, then the means) of the given score files."""
    rows = {n: json.loads((work / "scores" / f"{n}.json").read_text()) for n in names}
    organs = [k for k, v in next(iter(rows.values())).items() if isinstance(v, dict)]
    head = "| run | " + " | ".join(organs) + " | **mean Dice** | **mean HD95 mm** |"
    lines = [head, "|" + "---|" * (len(organs) + 3)]
    for n, r in rows.items():
        cells = [f"{r[o]['dice']:.3f} / {r[o]['hd95']}" for o in organs]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | **{r['mean_dice']:.3f}** | {r['mean_hd95']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--heldout", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--heldout-only", action="store_true", help="train view from the held-out dataset alone")
    t = sub.add_parser("train")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--name", required=True)
    t.add_argument("--heldout-only", action="store_true")
    t.add_argument("overrides", nargs=argparse.REMAINDER)
    q = sub.add_parser("predict")
    q.add_argument("--work", type=Path, required=True)
    q.add_argument("--name", required=True)
    q.add_argument("--variants", default="default")
    q.add_argument("--checkpoints", nargs="*")
    r = sub.add_parser("report")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("names", nargs="+")
    s = sub.add_parser("score")
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--pred", type=Path, required=True)
    s.add_argument("--name", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.heldout, a.train, a.fold, a.folds, a.out, a.heldout_only)
    elif a.cmd == "train":
        overrides = [o for o in a.overrides if o != "--"]
        train(a.work, a.name, overrides, a.heldout_only)
    elif a.cmd == "predict":
        variants = list(VARIANTS) if a.variants == "all" else a.variants.split(",")
        predict(a.work, a.name, variants, a.checkpoints)
    elif a.cmd == "report":
        print(report(a.work, a.names))  # noqa: T201 - the table is the command's output
    else:
        score(a.work, a.pred, a.name)


if __name__ == "__main__":
    main()
