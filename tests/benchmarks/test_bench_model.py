"""The inference benchmark's trained model: trained once into the cache folder, then reused.

Run in a subprocess from the repository root, as the benchmarks are (``benchmarks`` here would import
this test folder).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import numpy as np
from benchmarks.bench_model import RECIPE, network_grid_shape, trained_checkpoint
from benchmarks.synthetic_ct import PHANTOM_LABELS, phantom_ct, phantom_labels
from medunet.training.checkpoint import load_model

cache = sys.argv[1]
shape = (64, 64, 48)
ct, lab = phantom_ct(shape), phantom_labels(shape)
path = trained_checkpoint(cache, steps=1)
mtime = path.stat().st_mtime_ns
again = trained_checkpoint(cache, steps=1)
net, plans = load_model(path)
print(json.dumps({
    "labels_present": sorted(np.unique(lab).tolist()),
    "organ_hu": {k: float(ct[lab == k].mean()) for k in (1, 2, 3)},
    "path": str(path), "again": str(again), "reused": again.stat().st_mtime_ns == mtime,
    "plans_labels": {str(k): v for k, v in plans.labels.items()},
    "phantom_labels": {str(k): v for k, v in PHANTOM_LABELS.items()},
    "patch": list(plans.patch_size), "recipe_patch": RECIPE["patch"],
    "grid": list(network_grid_shape()),
}))
"""


@pytest.mark.slow  # renders four 307x307x225 phantoms and trains a step: ~30 s CPU, minutes under load
def test_trained_checkpoint_is_cached_loadable_and_labels_match_the_phantom(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["labels_present"] == [0, 1, 2, 3]
    for k, hu in (("1", 60.0), ("2", 45.0), ("3", 30.0)):  # the blobs' HU (integer noise of +-12)
        assert abs(r["organ_hu"][k] - hu) < 2.0
    assert Path(r["path"]).parent == tmp_path and Path(r["path"] + ".sha256").is_file()
    assert r["again"] == r["path"] and r["reused"]
    assert r["plans_labels"] == r["phantom_labels"]
    assert r["patch"] == [r["recipe_patch"]] * 3
    assert r["grid"] == [307, 307, 225]
