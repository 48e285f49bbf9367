"""The same planning on MR: z-score intensities, no body crop, and a model that predicts on the source grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tiny_data import run_bundle

from medunet.data.synthetic import generate_dataset
from medunet.inference import Predictor
from medunet.io import read_image
from medunet.plans import Plans


def test_synthetic_mr_plans_zscore_without_body_crop(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "mr", modality="MR", cases=4, test_cases=1, size=40, seed=5).parent
    out = tmp_path / "run"
    run_bundle(data, out, max_epochs=2, select_postprocessing=False)
    plans = Plans.load(out / "plans.json")
    assert plans.modality == "MR"
    assert plans.intensity.kind == "zscore_nonzero"
    assert plans.mirror_axes == (0,)  # kidneys come in left/right pairs
    assert set(plans.rationale) >= {"spatial_dims", "mirror_axes"}
    assert json.loads((out / "schedule.json").read_text())["max_epochs"] == 2
    predictor = Predictor.from_checkpoint(out / "last.pt", device="cpu", tta_mirror=True)
    assert predictor.crop_foreground is False  # a z-score over a crop would see other statistics
    image = read_image(next((data / "imagesTs").glob("*.nii.gz")))
    prediction = predictor.predict(image)
    assert prediction.labels.shape == image.array.shape[:3]
    np.testing.assert_array_equal(prediction.affine, image.affine)
