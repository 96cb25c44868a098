"""A damaged checkpoint is found by its checksums, reported by path, moved aside, and the previous one
is used; with none left the run stops with an error naming them. A run whose newest checkpoint was
damaged resumes from the one before and ends bit-identical."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from demo_runs import small_config
from vlalign_jax.parallel.mesh import make_mesh
from vlalign_jax.train.checkpoint import Checkpointer, CorruptCheckpointError, load_params
from vlalign_jax.train.checkpoint_manifest import MANIFEST
from vlalign_jax.train.loop import train
from vlalign_jax.train.state import TrainState


def _state(value: float) -> TrainState:
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    sharded, repl = NamedSharding(mesh, PartitionSpec("fsdp", None)), NamedSharding(mesh, PartitionSpec())
    kernel = jax.device_put(jnp.full((64, 16), value, jnp.float32), sharded)
    return TrainState(step=jax.device_put(jnp.asarray(int(value), jnp.int32), repl), params={"kernel": kernel},
                      opt_state={"mu": kernel * 2}, rng=jax.device_put(jax.random.PRNGKey(1), repl),
                      extras={"nonfinite_steps": jax.device_put(jnp.asarray(0, jnp.int32), repl)})


def _largest_file(step_dir):
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST), key=lambda p: p.stat().st_size)


def _truncate(step_dir):
    path = _largest_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _flip_a_bit(step_dir):
    path = _largest_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def test_damaged_steps_are_detected_moved_aside_and_the_previous_is_used(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, max_to_keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), None, {"step": step})
    ckpt.wait()
    ckpt.close()
    directory = tmp_path / "checkpoints"
    assert all((directory / str(step) / MANIFEST).exists() for step in (1, 2, 3))
    assert Checkpointer(tmp_path).latest_valid_step() == 3  # intact: nothing moved

    truncated = _truncate(directory / "3")
    with caplog.at_level(logging.ERROR):
        assert Checkpointer(tmp_path).latest_valid_step() == 2
    assert str(truncated) in caplog.text and "truncated" in caplog.text
    assert (directory / "corrupt-3").is_dir() and not (directory / "3").exists()
    np.testing.assert_array_equal(load_params(tmp_path)["kernel"], np.full((64, 16), 2.0))

    flipped = _flip_a_bit(directory / "2")
    np.testing.assert_array_equal(load_params(tmp_path)["kernel"], np.full((64, 16), 1.0))  # read-only skip
    with pytest.raises(CorruptCheckpointError, match="step 2"):
        load_params(tmp_path, step=2)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert Checkpointer(tmp_path).latest_valid_step() == 1
    assert str(flipped) in caplog.text and "checksum" in caplog.text

    _flip_a_bit(directory / "1")
    with pytest.raises(CorruptCheckpointError, match=r"no undamaged checkpoint .*step 1: .*checksum"):
        Checkpointer(tmp_path).latest_valid_step()
    assert sorted(p.name for p in directory.iterdir()) == ["corrupt-1", "corrupt-2", "corrupt-3"]


def test_a_run_whose_newest_checkpoint_is_damaged_resumes_from_the_previous_one_exactly(tmp_path):
    # Constant lr: the resumed steps see the same schedule values whatever the restart point.
    config = small_config(**{"train.steps": 4, "train.checkpoint_every": 2, "optim.final_lr_fraction": 1.0})
    train(config, tmp_path)
    want = load_params(tmp_path)
    _flip_a_bit(tmp_path / "checkpoints" / "4")
    train(config, tmp_path)  # finds step 4 damaged, resumes at 2, trains 3 and 4 again
    assert (tmp_path / "checkpoints" / "corrupt-4").is_dir()
    jax.tree.map(np.testing.assert_array_equal, load_params(tmp_path), want)


def test_an_unusable_workdir_is_an_error_before_any_compute(tmp_path):
    from vlalign_jax.train.workdir import WorkdirError

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkdirError, match=r"workdir .*a_file/run is not writable.*nothing was trained"):
        train(small_config(), blocker / "run")
