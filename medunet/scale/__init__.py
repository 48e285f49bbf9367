"""Segmenting a whole archive: case lists and manifests, resumable runs, a Ray actor pool.

- :mod:`medunet.scale.manifest`: ``--input cases.txt`` (one path per line) or ``cases.csv`` (a manifest).
- :mod:`medunet.scale.runlog`: which case folders are complete for a model (resume), ``failures.csv``,
  ``run.json``.
- :mod:`medunet.scale.ray_runner`: ``medunet predict --ray``: the same per-case code on a pool of Ray
  actors that each load the model once; evaluation over many cases on the same pool.

Ray is an optional dependency (``pip install medunet[scale]``); only ``ray_runner`` imports it.
"""
