import pytest
import torch

from medunet.errors import CheckpointError
from medunet.training.checkpoint import is_valid_checkpoint, load_checkpoint, save_checkpoint


def test_roundtrip_and_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
    p = save_checkpoint(tmp_path / "ckpt.pt", state)
    got = load_checkpoint(p)
    assert got["epoch"] == 3 and torch.equal(got["model"]["w"], torch.arange(4.0))
    assert got["format"] == "medunet-checkpoint/1"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_damaged_checkpoint_is_refused(tmp_path):
    p = save_checkpoint(tmp_path / "ckpt.pt", {"model": {"w": torch.ones(1000)}})
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(p)
    assert not is_valid_checkpoint(p)


def test_missing_digest_and_truncation_refused(tmp_path):
    p = save_checkpoint(tmp_path / "ckpt.pt", {"model": {"w": torch.ones(10)}})
    (tmp_path / "ckpt.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="no checksum"):
        load_checkpoint(p)
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load_checkpoint(p, verify=False)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(p, verify=False)
