"""DDP on CPU: two gloo processes via torchrun train in lockstep; only rank 0 writes files."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
from ignite.engine import Engine
from tiny_data import BUNDLE, bundle_cli_args, make_tiny_ct_dataset

from medunet.plans import Plans
from medunet.training import Checkpointer, TrainingEnv, load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path):
    data = make_tiny_ct_dataset(tmp_path / "ds", n_cases=5)
    out = tmp_path / "run"
    # Test-only overlay: after training, every rank saves the weights it ended with.
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"training": [
        "$@train#trainer.run()",
        "$torch.save(@network_def.state_dict(), @output_dir + '/weights_rank' + str(@env.rank) + '.pt')",
    ]}))  # fmt: skip
    configs = [str(BUNDLE / "train.json"), str(BUNDLE / "multi_gpu_train.json"), str(probe)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "monai.bundle", "run", "training",
        "--config_file", json.dumps(configs), "--meta_file", str(BUNDLE / "metadata.json"),
        *bundle_cli_args(data, out, max_epochs=2, val_interval=2),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "DDP: rank 0/2, backend gloo" in log
    w0, w1 = (torch.load(out / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)  # ranks in lockstep
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and all(torch.equal(state["model"][k], w0[k]) for k in w0)
    # 5 cases: 4 train split over 2 ranks -> 1 iteration per epoch on each rank.
    assert state["iteration"] == 2
    assert sorted(p.name for p in out.glob("*.pt") if not p.name.startswith("weights")) == [
        "best.pt", "epoch_0001.pt", "epoch_0002.pt", "last.pt"]  # fmt: skip


def test_only_rank_zero_writes_checkpoints(tmp_path):
    plans = Plans(
        labels={0: "bg", 1: "a"}, target_spacing=(1.0, 1.0, 1.0), patch_size=(16, 16), spatial_dims=2
    )
    net = torch.nn.Conv2d(1, 2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.max_epochs, engine.state.iteration = 1, 1, 1
    for rank, expected in ((1, []), (0, ["epoch_0001.pt", "epoch_0001.pt.sha256"])):
        env = TrainingEnv(torch.device("cpu"), seed=0, rank=rank, world_size=2)
        Checkpointer(tmp_path, plans, net, opt, env)._epoch_completed(engine)
        assert sorted(p.name for p in Path(tmp_path).iterdir()) == expected


def _early_stopping_rank(rank: int, port: int, out: str) -> None:
    """One gloo rank, two rounds: in round ``r`` only rank ``r`` has gone ``patience`` epochs without
    improving."""
    import torch.distributed as dist

    from medunet.training.handlers import EarlyStopping

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        env = TrainingEnv(torch.device("cpu"), seed=0, rank=rank, world_size=2, distributed=True)
        decisions = []
        for stale_rank in (0, 1):
            engine = Engine(lambda e, b: None)
            engine.state.epoch = 10
            engine.state.best_metric_epoch = 2 if rank == stale_rank else 9
            EarlyStopping(patience=3, env=env)(engine)
            decisions.append(engine.should_terminate)
        Path(out, f"rank{rank}").write_text(json.dumps(decisions))
    finally:
        dist.destroy_process_group()


def test_early_stopping_is_rank_zeros_decision_on_every_rank(tmp_path):
    # Each rank sees its own validation history; rank 0's decision must reach the other rank, both
    # ways, or DDP ranks stop at different epochs and the next collective hangs.
    torch.multiprocessing.spawn(_early_stopping_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    # Round 0: rank 0 stale -> both stop; round 1: only rank 1 stale -> neither stops.
    assert [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == [[True, False], [True, False]]
