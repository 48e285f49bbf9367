"""Dataset layouts -> datalist, splits and folds, checks, fingerprint, synthetic phantoms."""

from medunet.data.check import Problem, check_dataset
from medunet.data.datalist import Case, Datalist
from medunet.data.fingerprint import Fingerprint, compute_fingerprint, load_or_compute_fingerprint
from medunet.data.layouts import LAYOUTS, dataset_hash, detect_layout, load_dataset
from medunet.data.splits import Split, kfold, split_cases

__all__ = [
    "LAYOUTS",
    "Case",
    "Datalist",
    "Fingerprint",
    "Problem",
    "Split",
    "check_dataset",
    "compute_fingerprint",
    "dataset_hash",
    "detect_layout",
    "kfold",
    "load_dataset",
    "load_or_compute_fingerprint",
    "split_cases",
]
