"""The dVAE tokenizer against OpenAI's ``dall_e`` encoder (same keys, same logits) and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from facerep.models.dvae import DVAEEncoder, load_dvae
from facerep.runtime.checkpoint import CheckpointError

# dall_e's own validators ask for n_hid >= 64 and vocab_size >= 512: its smallest encoder
N_HID, VOCAB = 64, 512


def _dall_e(n_blk: int) -> nn.Module:
    """A small ``dall_e`` encoder (random weights) with noise on its biases, which start at zero."""
    encoder_mod = pytest.importorskip("dall_e.encoder")
    torch.manual_seed(n_blk)
    enc = encoder_mod.Encoder(n_hid=N_HID, n_blk_per_group=n_blk, vocab_size=VOCAB, requires_grad=False)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith(".b"):
                p.add_(0.05 * torch.randn_like(p))
    return enc.eval()


def _write(sd: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("n_blk", [1, 2])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_logits_and_tokens_match_dall_e(tmp_path: Path, n_blk: int, suffix: str):
    utils = pytest.importorskip("dall_e.utils")
    ref = _dall_e(n_blk)
    model = load_dvae(_write(ref.state_dict(), tmp_path / f"dvae{suffix}"))
    arch = (model.n_hid, model.n_blk_per_group, model.vocab_size, model.downsample)
    assert arch == (N_HID, n_blk, VOCAB, 8)
    assert list(model.state_dict()) == list(ref.state_dict())
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(utils.map_pixels(x))
        logits = model(x)
    assert logits.shape == (2, VOCAB, 4, 3)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    tokens = model.tokens(x)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 12)
    assert torch.equal(tokens, expected.argmax(1).flatten(1))
    assert len(tokens.unique()) > 1


def test_wrapped_and_ddp_prefixed_state_dict(tmp_path: Path):
    sd = DVAEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16).state_dict()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    model = load_dvae(_write(wrapped, tmp_path / "wrapped.pt"))
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=r"nope\.pth: .*not found") as err:
        load_dvae(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_pickled_module_is_refused_with_the_conversion(tmp_path: Path):
    path = tmp_path / "encoder.pkl"
    torch.save(_dall_e(1), path)
    with pytest.raises(CheckpointError) as err:
        load_dvae(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "weights_only=False).state_dict(), 'dvae_encoder.pth')" in msg


def test_wrong_keys_are_named(tmp_path: Path):
    sd = DVAEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16).state_dict()
    sd["blocks.extra.w"] = sd.pop("blocks.output.conv.w")
    path = _write(sd, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_dvae(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "missing blocks.output.conv.w" in msg and "unexpected blocks.extra.w" in msg

    other = _write({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: .*missing blocks\.input\.w"):
        load_dvae(other)


def test_wrong_shape_is_named(tmp_path: Path):
    sd = DVAEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16).state_dict()
    sd["blocks.group_2.block_1.res_path.conv_2.w"] = torch.zeros(4, 4, 1, 1)
    with pytest.raises(CheckpointError, match=r"conv_2\.w has shape \[4, 4, 1, 1\], expected \[4, 4, 3, 3\]"):
        load_dvae(_write(sd, tmp_path / "shape.pth"))


BAD_INPUTS = [
    torch.rand(3, 16, 16),
    torch.rand(1, 3, 20, 16),
    torch.rand(1, 1, 16, 16),
    torch.ones(1, 3, 8, 8).long(),
]


@pytest.mark.parametrize("x", BAD_INPUTS, ids=["3d", "h20", "1chan", "int64"])
def test_bad_input_is_one_line(x: torch.Tensor):
    model = DVAEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16)
    with pytest.raises(ValueError, match=r"expects .*\[N, .*got") as err:
        model(x)
    assert "\n" not in str(err.value)
