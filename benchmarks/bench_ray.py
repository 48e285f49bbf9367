"""Archive throughput: ``medunet predict`` locally vs on Ray with 1 and 2 workers (cases per minute).

The same cases (synthetic CTs), the same checkpoint (a seeded random registry UNet with the plans of a
CT model) and the same per-case code are run three ways:

- ``local``: one process, the model loaded once, cases one after another (``predict_one``), torch's
  default thread count (what ``medunet predict`` does); ``local_1t``: the same on one thread, like one
  Ray worker of 1 CPU (on a loaded 2-core machine two threads can be slower than one: they wait for
  each other whenever another process holds a core);
- ``ray_1w`` / ``ray_2w``: ``medunet predict --ray`` with 1 or 2 actors of 1 CPU each, on one local Ray
  runtime (started once for both; its start is reported separately, as is each run's worker start).

Reported per mode: steady-state cases/minute (the predicting phase, model already loaded), end-to-end
seconds (with the workers' start and model load), and for Ray the overhead per case: driver round trip
minus the time the worker spent on the case (scheduling, serialisation, result transfer). ``agreement``
is the fraction of case folders whose files are the same bytes as the local run's (case.json compared
without its creation time).

Run from the repository root::

    python -m benchmarks.bench_ray                 # 8 synthetic CTs (in-plane 128), 'small' UNet
    python -m benchmarks.bench_ray --cases 16 --size 160
    python -m benchmarks.bench_ray --smoke         # 3 tiny cases, tiny net (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import HEADER, Row, add_cache_dir_argument, bench_cache_dir, print_row, write_results

logger = logging.getLogger(__name__)


def _make_inputs(folder: Path, cases: int, size: int, net_size: str) -> tuple[Path, list[Path]]:
    """Checkpoint and synthetic CTs (kept in ``folder`` between full runs)."""
    import torch

    from medunet.data.synthetic import SYNTHETIC_LABELS, generate_case
    from medunet.io import write_nifti
    from medunet.networks import build_network
    from medunet.plans import Plans
    from medunet.training.checkpoint import save_checkpoint

    folder = folder / f"ray_{cases}x{size}_{net_size}"
    ckpt = folder / "model" / "best.pt"
    images = [folder / "in" / f"ct_{i:03d}.nii.gz" for i in range(cases)]
    if not ckpt.is_file():
        plans = Plans(
            labels=dict(SYNTHETIC_LABELS),
            target_spacing=(1.5, 1.5, 2.0),
            patch_size=(64, 64, 64) if net_size != "tiny" else (32, 32, 32),
            network_kwargs={"size": net_size},
        )
        torch.manual_seed(0)
        net = build_network(plans.network, 3, 1, plans.num_classes, size=net_size)
        save_checkpoint(ckpt, {"model": net.state_dict(), "plans": plans.to_dict()})
    for i, path in enumerate(images):
        if not path.is_file():
            image, _ = generate_case(1000 + i, "CT", size=size)
            write_nifti(path, np.asarray(image.array), image.affine)
    return ckpt, images


def _case_digest(case_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(case_dir.iterdir()):
        data = p.read_bytes()
        if p.name == "case.json":
            record = json.loads(data)
            record.pop("created", None)
            data = json.dumps(record, sort_keys=True).encode()
        h.update(p.name.encode() + hashlib.sha256(data).digest())
    return h.hexdigest()


def _digests(out: Path) -> dict[str, str]:
    return {
        p.name: _case_digest(p) for p in sorted(out.iterdir()) if p.is_dir() and not p.name.startswith(".")
    }


#: Both paths run PyTorch: the agreement check is identical case folders, and OpenVINO (medunet
#: predict's CPU default) sums differently with the fewer threads a Ray worker gets (README, "Segmenting
#: an archive"). Scale-out, not the engine, is what this benchmark measures.
ENGINE = ("--engine", "torch")


def _args(ckpt: Path, inputs: Path, out: Path, extra: Sequence[str] = ()) -> argparse.Namespace:
    from medunet.cli import build_parser

    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(inputs), "--output", str(out), *extra]
    return build_parser().parse_args(argv)


def run_local(ckpt: Path, inputs: Path, out: Path, threads: int | None = None) -> dict[str, Any]:
    """The local path: model loaded once, then ``predict_one`` per case (what ``medunet predict`` does)."""
    import torch

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        return _run_local(ckpt, inputs, out)
    finally:
        torch.set_num_threads(default_threads)


def _run_local(ckpt: Path, inputs: Path, out: Path) -> dict[str, Any]:
    from medunet.cli.predict import collect_cases, load_predictor, predict_one

    args = _args(ckpt, inputs, out, ["--device", "cpu", *ENGINE])
    t0 = time.perf_counter()
    setup = load_predictor(args)
    load_s = time.perf_counter() - t0
    cases, _ = collect_cases([inputs], None)
    t1 = time.perf_counter()
    per_case = []
    for case in cases:
        t = time.perf_counter()
        predict_one(args, case, out.resolve(), setup)
        per_case.append(time.perf_counter() - t)
    steady = time.perf_counter() - t1
    return {
        "cases": len(cases),
        "startup_s": load_s,
        "steady_s": steady,
        "end_to_end_s": time.perf_counter() - t0,
        "per_case_s": float(np.mean(per_case)),
    }


def run_ray(ckpt: Path, inputs: Path, out: Path, workers: int) -> dict[str, Any]:
    """``medunet predict --ray --workers N`` on the Ray session this process holds."""
    from medunet.cli import main

    t0 = time.perf_counter()
    rc = main(
        ["predict", "--checkpoint", str(ckpt), "-i", str(inputs), "-o", str(out), "--ray"]
        + ["--workers", str(workers), *ENGINE]
    )
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"ray run with {workers} worker(s) failed (exit {rc}); see {out / 'failures.csv'}")
    run = json.loads((out / "run.json").read_text())
    done = run["cases"]["done"]
    return {
        "cases": done,
        "startup_s": run["stages_s"]["first_worker_ready_s"],
        "steady_s": run["stages_s"]["predict_wall_s"],
        "end_to_end_s": wall,
        "per_case_s": run["stages_s"]["read"] / done
        + run["stages_s"]["predict"] / done
        + run["stages_s"]["write"] / done,
        "overhead_s_per_case": run["ray_overhead_s_per_case"],
        "per_worker": run["throughput"]["per_worker"],
    }


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[float]:
    """One local Ray runtime for every Ray mode (yields its start-up seconds); stopped and removed after."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp = tempfile.mkdtemp(prefix="mbr", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=temp,
        object_store_memory=200 * 1024 * 1024,
    )
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="3 tiny cases, tiny net (used by the test)")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="in-plane matrix of the synthetic CTs")
    ap.add_argument("--net-size", default="small", help="registry UNet preset (tiny, small, ...)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray runtime")
    ap.add_argument("--out", default=None, help="results JSON (default runs/benchmarks/ray.json)")
    add_cache_dir_argument(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.cases, args.size, args.net_size = 3, 48, "tiny"
    logging.basicConfig(level=logging.WARNING)
    rows: list[Row] = []
    results: dict[str, Any] = {}
    with (
        bench_cache_dir(args.cache_dir, args.smoke) as cache,
        tempfile.TemporaryDirectory(prefix="mbr_out") as tmp,
    ):
        ckpt, images = _make_inputs(cache, args.cases, args.size, args.net_size)
        inputs = images[0].parent
        # Every mode writes to the same folder (review.itksnap records the case folder's path), which is
        # then moved aside for the comparison.
        out = Path(tmp) / "out"
        outs = {m: Path(tmp) / m for m in ("local", "local_1t", "ray_1w", "ray_2w")}
        results["local"] = run_local(ckpt, inputs, out)
        out.rename(outs["local"])
        results["local_1t"] = run_local(ckpt, inputs, out, threads=1)
        out.rename(outs["local_1t"])
        reference = _digests(outs["local"])
        with local_ray(args.cpus) as ray_start_s:
            results["ray_start_s"] = ray_start_s
            for workers in (1, 2):
                results[f"ray_{workers}w"] = run_ray(ckpt, inputs, out, workers)
                out.rename(outs[f"ray_{workers}w"])
        local = results["local_1t"]  # like for like: a Ray worker is one process on 1 CPU
        print(HEADER.replace("stock_s", "local_s").replace("medunet_s", "  ray_s") + "  (local: 1 thread)")
        for mode in ("ray_1w", "ray_2w"):
            r = results[mode]
            digests = _digests(outs[mode])
            same = sum(digests.get(k) == v for k, v in reference.items()) / max(len(reference), 1)
            row = Row(
                name=f"{mode} seconds per case (steady)",
                stock_s=local["steady_s"] / local["cases"],
                medunet_s=r["steady_s"] / r["cases"],
                agreement=same,
                agreement_label="identical_case_folders",
                extra={
                    "local_cases_per_min": 60.0 * local["cases"] / local["steady_s"],
                    "ray_cases_per_min": 60.0 * r["cases"] / r["steady_s"],
                    "local_end_to_end_s": local["end_to_end_s"],
                    "local_default_threads_cases_per_min": 60.0
                    * results["local"]["cases"]
                    / results["local"]["steady_s"],
                    "ray_end_to_end_s": r["end_to_end_s"],
                    "ray_worker_start_s": r["startup_s"],
                    "ray_overhead_s_per_case": r["overhead_s_per_case"],
                    "ray_worker_s_per_case": r["per_case_s"],
                    "local_s_per_case": local["per_case_s"],
                },
            )
            rows.append(row)
            print_row(row)
        for mode in ("local", "local_1t", "ray_1w", "ray_2w"):
            r = results[mode]
            print(
                f"  {mode:<8} {60.0 * r['cases'] / r['steady_s']:7.1f} cases/min steady, "
                f"{r['end_to_end_s']:6.1f} s end to end ({r['cases']} cases, start-up {r['startup_s']:.1f} s)"
                + (
                    f", Ray overhead {1000 * r['overhead_s_per_case']:.1f} ms/case"
                    if "overhead_s_per_case" in r
                    else ""
                )
            )
        print(f"  Ray runtime start: {results['ray_start_s']:.1f} s (once, before both Ray runs)")
    write_results(
        "ray",
        rows,
        out=args.out,
        setup={"cases": args.cases, "size": args.size, "net_size": args.net_size, "ray_cpus": args.cpus},
        results=results,
        load_average=os.getloadavg(),
    )
    return rows


if __name__ == "__main__":
    main()
