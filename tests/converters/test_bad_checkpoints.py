"""Bad checkpoints fail loudly, list every offending key, and never leave a half-written destination."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

import vlalign_jax.converters as converters  # noqa: E402
from torch_models import tiny_open_clip  # noqa: E402
from vlalign_jax.cli import main  # noqa: E402


@pytest.fixture
def state():
    return tiny_open_clip(quick_gelu=True).state_dict()


def test_every_bad_key_is_listed_with_shapes(tmp_path, state):
    del state["visual.ln_post.bias"]
    del state["transformer.resblocks.1.mlp.c_fc.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["visual.transformer.resblocks.0.attn.out_proj.weight"] = torch.zeros(128, 127)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(converters.CheckpointMismatchError) as err:
        converters.load(tmp_path / "bad.pt", family="openai")
    message = str(err.value)
    assert "missing key: visual.ln_post.bias" in message
    assert "missing key: transformer.resblocks.1.mlp.c_fc.bias" in message
    assert "unexpected key: extra.weight" in message
    assert "wrong shape: visual.transformer.resblocks.0.attn.out_proj.weight: expected (128, 128), found (128, 127)" \
        in message
    assert len(err.value.missing) == 2 and len(err.value.unexpected) == 1 and len(err.value.misshaped) == 1


def test_keys_needed_to_infer_the_architecture_are_named(tmp_path, state):
    del state["visual.conv1.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(converters.CheckpointMismatchError, match="missing key: visual.conv1.weight"):
        converters.load(tmp_path / "bad.pt", family="open_clip", act="gelu")


def test_unknown_family_lists_families(tmp_path, state):
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="families: openai, open_clip, hf, degla, flax"):
        converters.load(tmp_path / "x.pt", family="timm")


def test_unknown_file_type(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(converters.CheckpointFormatError, match="cannot tell which family"):
        converters.load(tmp_path / "weights.npz")


def test_truncated_file_names_the_file(tmp_path, state):
    torch.save(state, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(converters.CheckpointFormatError, match="cut.pt"):
        converters.load(tmp_path / "cut.pt", family="openai")


def test_failed_conversion_writes_nothing(tmp_path, state, capsys):
    state["visual.proj"] = torch.zeros(128, 31)
    torch.save(state, tmp_path / "bad.pt")
    for dst, family in (("out_dir", "flax"), ("out.pt", "open_clip"), ("hf_out", "hf")):
        code = main(["convert", str(tmp_path / "bad.pt"), str(tmp_path / dst), "--from", "openai", "--to", family])
        assert code == 2
        assert "wrong shape: visual.proj" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.pt"]


def test_write_failure_leaves_no_partial_file(tmp_path, state):
    torch.save(state, tmp_path / "good.pt")
    model, params = converters.load(tmp_path / "good.pt", family="openai")
    with pytest.raises(converters.CheckpointFormatError, match="unknown weight file type"):
        converters.save(model, params, tmp_path / "out.weights", family="open_clip")
    params["text_projection"]["kernel"] = np.zeros((5, 5), np.float32)
    with pytest.raises(converters.CheckpointMismatchError, match="text_projection/kernel"):
        converters.save(model, params, tmp_path / "hf", family="hf")
    assert sorted(os.listdir(tmp_path)) == ["good.pt"]


def test_existing_destination_is_not_replaced_without_overwrite(tmp_path, state):
    torch.save(state, tmp_path / "good.pt")
    (tmp_path / "dst.pt").write_bytes(b"keep me")
    assert main(["convert", str(tmp_path / "good.pt"), str(tmp_path / "dst.pt"), "--to", "openai"]) == 2
    assert (tmp_path / "dst.pt").read_bytes() == b"keep me"
    assert main(["convert", str(tmp_path / "good.pt"), str(tmp_path / "dst.pt"), "--to", "openai",
                 "--overwrite"]) == 0
    assert torch.equal(torch.load(tmp_path / "dst.pt")["visual.proj"], state["visual.proj"])
