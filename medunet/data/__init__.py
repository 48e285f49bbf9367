"""Dataset layouts -> datalist, splits and folds, checks, fingerprint, synthetic phantoms."""

from medunet.data.datalist import Case, Datalist

__all__ = ["Case", "Datalist"]
