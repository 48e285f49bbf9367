"""Helpers for the Ray tests: data, checkpoint, case-folder comparison, and the Ray processes a test owns."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medunet.data.synthetic import SYNTHETIC_LABELS, generate_case
from medunet.io import write_nifti

CORRUPT = b"\x1f\x8b not really a nifti"


def make_checkpoint(folder: Path) -> Path:
    """A tiny real UNet checkpoint (random weights) for the synthetic labels."""
    import torch

    from medunet.networks import build_network
    from medunet.plans import Plans
    from medunet.training.checkpoint import save_checkpoint

    plans = Plans(
        labels=dict(SYNTHETIC_LABELS),
        target_spacing=(2.0, 2.0, 2.0),
        patch_size=(32, 32, 32),
        network_kwargs={"size": "tiny"},
    )
    torch.manual_seed(0)
    net = build_network(plans.network, 3, 1, plans.num_classes, size="tiny")
    return save_checkpoint(folder / "best.pt", {"model": net.state_dict(), "plans": plans.to_dict()})


def make_cases(folder: Path, n: int, *, size: int = 48, corrupt: tuple[int, ...] = ()) -> list[Path]:
    """``n`` synthetic CTs ``ct_0.nii.gz``... (``corrupt`` indices get a broken file instead)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"ct_{i}.nii.gz"
        if i in corrupt:
            path.write_bytes(CORRUPT)
        else:
            image, _ = generate_case(i, "CT", size=size)
            write_nifti(path, np.asarray(image.array), image.affine)
        paths.append(path)
    return paths


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def case_record(case_dir: Path) -> dict:
    """case.json without its creation time (the one field that differs between two runs)."""
    record = json.loads((case_dir / "case.json").read_text())
    record.pop("created")
    return record


def complete_cases(out: Path) -> list[str]:
    """Visible case folders that hold a case.json."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.is_dir() and (p / "case.json").is_file())


# ------------------------------------------------------------------------------------ Ray processes


def ray_processes() -> dict[int, str]:
    """Live (non-zombie) Ray processes on this machine: ``{pid: command line}``."""
    import psutil  # shipped with ray (ray/thirdparty_files), importable once ray is

    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::") or "/site-packages/ray/" in cmd:
                found[proc.info["pid"]] = cmd[:200]
    return found


def wait_no_new_ray_processes(before: set[int], timeout: float = 60.0) -> dict[int, str]:
    """Wait until no Ray process outside ``before`` lives; returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p: c for p, c in ray_processes().items() if p not in before}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def stop_processes(pids: set[int], grace: float = 3.0) -> None:
    """SIGTERM the given processes (by id), SIGKILL what is left after ``grace`` seconds."""
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return (
        [str(exe)]
        if exe.is_file()
        else [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    )


@contextlib.contextmanager
def ray_head_node(num_cpus: int = 2, env: dict[str, str] | None = None) -> Iterator[str]:
    """``ray start --head`` on 127.0.0.1 (a subprocess); yields its address; stops every process it and its
    jobs started (by process id, never ``ray stop``, which would stop any Ray on the machine).

    ``env``: extra environment of the node's processes (its workers inherit it)."""
    before = set(ray_processes())
    temp = Path(tempfile.mkdtemp(prefix="mdr", dir="/tmp"))  # short: Ray's socket paths must fit
    port = free_port()
    cmd = [
        *ray_cli(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--object-store-memory={200 * 1024 * 1024}",
        f"--temp-dir={temp}",
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})}
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        stop_processes(set(ray_processes()) - before)
        shutil.rmtree(temp, ignore_errors=True)
    left = wait_no_new_ray_processes(before, timeout=30)
    assert not left, f"Ray processes left running: {left}"


#: ``sitecustomize`` for the Ray processes a test starts (see :class:`CaseHolder`).
HOLD_SITE = Path(__file__).parent / "hold"


class CaseHolder(threading.Thread):
    """Holds one case inside the Ray workers and SIGKILLs every worker process that holds it.

    The workers get ``tests/scale/hold`` on their ``PYTHONPATH`` (:meth:`env`): its ``sitecustomize``
    makes ``predict_one`` write ``held-<n>-<pid>`` for the planned case and wait. So a kill lands on a
    worker that is provably in the middle of that case, whatever the load (watching process titles
    missed short cases on a loaded machine). :meth:`plan` names the case and how many attempts to hold.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.killed: list[int] = []
        self.held: list[int] = []
        self.kill = True
        self._seen: set[str] = set()
        self._halt = threading.Event()

    def env(self) -> dict[str, str]:
        """What the Ray processes need in their environment."""
        paths = [str(HOLD_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"PYTHONPATH": os.pathsep.join(paths), "MEDUNET_TEST_HOLD_DIR": str(self.folder)}

    def plan(self, case: str, times: int = 1, *, kill: bool = True) -> None:
        """Hold the first ``times`` attempts at ``case`` (and kill their workers unless ``kill`` is
        false: then they wait, listed in :attr:`held`); forget earlier holds."""
        for old in self.folder.glob("held-*"):
            old.unlink()
        self.killed.clear()
        self.held.clear()
        self._seen.clear()
        self.kill = kill
        (self.folder / "plan.json").write_text(json.dumps({"case": case, "times": times}))

    def run(self) -> None:
        while not self._halt.is_set():
            for marker in sorted(self.folder.glob("held-*")):
                if marker.name not in self._seen:
                    self._seen.add(marker.name)
                    pid = int(marker.name.rsplit("-", 1)[1])
                    self.held.append(pid)
                    if self.kill:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
            time.sleep(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        (self.folder / "plan.json").unlink(missing_ok=True)
