"""Where training runs: device, seeds, threads, and (optionally) the DDP process group.

``setup_environment`` is the first object a bundle builds; everything else (datasets, network,
handlers) reads rank, device and world size from the :class:`TrainingEnv` it returns, so nothing else
reads environment variables.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from monai.utils import set_determinism

from medunet.config import as_bool
from medunet.errors import ConfigError
from medunet.precision import cpu_has_bf16

logger = logging.getLogger(__name__)


@dataclass
class TrainingEnv:
    """Device, seed and process-group facts of this training process."""

    device: torch.device
    seed: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    #: ``time.monotonic()`` when the environment was set up (the bundle's first step): a time budget
    #: counts from here, so dataset caching and planning are inside it.
    started: float = field(default_factory=time.monotonic)

    def elapsed_s(self) -> float:
        """Seconds since the environment was set up."""
        return time.monotonic() - self.started

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) logs, validates and writes files."""
        return self.rank == 0

    @property
    def amp_available(self) -> bool:
        return self.device.type == "cuda"

    def use_amp(self, requested: object) -> bool:
        """Mixed precision when asked for (``--amp true|false``) and the device supports it."""
        return as_bool(requested, "amp") and self.amp_available

    def cpu_autocast(self, requested: object) -> bool:
        """bf16 autocast on a CPU with native bf16 when mixed precision is asked for (``--amp``).

        MONAI's trainer autocasts only on CUDA, so this is carried by the network
        (:func:`medunet.training.training_network`) and the validator.
        """
        return as_bool(requested, "amp") and self.device.type == "cpu" and cpu_has_bf16()

    def amp_kwargs(self) -> dict[str, object]:
        """Autocast settings: bfloat16 where the GPU has it. float16 overflowed (NaN loss within a
        minute of 3D training on an H200: instance-norm statistics over 112^3 patches); bfloat16
        has float32's range."""
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return {"dtype": torch.bfloat16}
        return {}

    def ddp_device_ids(self) -> list[int] | None:
        return [self.device.index or 0] if self.device.type == "cuda" else None

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Tear down the process group (the bundle's ``finalize`` step)."""
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA (this process's GPU under DDP) when present, else CPU."""
    if str(device) == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(None, f"device {device!r} requested but CUDA is not available")
    return dev


def setup_environment(
    device: str = "auto", seed: int = 0, distributed: bool = False, deterministic: bool = False
) -> TrainingEnv:
    """Initialise the process group (from torchrun's variables), pick the device, seed everything.

    CPU threads are split between the processes on this machine. ``deterministic`` additionally asks
    torch for deterministic kernels (slower on CUDA; CPU kernels used here already are).
    """
    rank, world, local_rank = 0, 1, 0
    distributed = as_bool(distributed, "distributed")
    if distributed:
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ConfigError(None, "distributed=true needs torchrun (RANK/WORLD_SIZE are not set)")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if distributed and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        logger.info("DDP: rank %d/%d, backend %s, device %s", rank, world, backend, dev)
    if dev.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world if distributed else 1))
        torch.set_num_threads(max(1, _cpu_count() // max(1, local_world)))
    if rank != 0:
        quiet_non_main_rank()
    set_determinism(seed=seed + rank, use_deterministic_algorithms=deterministic or None)
    env = TrainingEnv(dev, seed, rank, world, local_rank, distributed)
    logger.info("device %s, %d CPU thread(s), seed %d", dev, torch.get_num_threads(), seed)
    return env


def quiet_non_main_rank() -> None:
    """Rank-0-only logging: other ranks keep warnings and errors only."""
    for name in ("medunet", "monai", "ignite", "py.warnings"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
