"""The checkpoint format: safetensors + JSON, atomic, verified, pickle-free."""

import json
import logging
import random
import subprocess

import numpy as np
import pytest
import torch

from tuneforge.training.checkpoint import (
    CheckpointError,
    check_same_run,
    checkpoint_name,
    latest_valid_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    resolve_resume,
    safe_checkpoint_io,
    write_checkpoint,
)
from tuneforge.training.resumable_sampler import ResumableSampler
from tuneforge.training.rng_state import rng_states, set_rng_states


def _optimizer_state():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _checkpoint():
    return {"state_dict": {"w": torch.randn(3, 4), "b": torch.arange(3)}, "optimizer_states": [_optimizer_state()],
            "loops": {"fit_loop": {"epoch": 1, "flags": [True, None, 2.5]}}, "rng": rng_states(),
            "global_step": 7, "tuneforge": {"identity": {"model.name": "tiny"}}}


def _assert_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


def test_round_trip_keeps_types_tensors_and_int_keys(tmp_path):
    original = _checkpoint()
    write_checkpoint(original, tmp_path / "step-1")
    assert sorted(p.name for p in (tmp_path / "step-1").iterdir()) == ["COMPLETE", "state.json",
                                                                      "tensors.safetensors"]
    restored = read_checkpoint(tmp_path / "step-1")
    _assert_equal(original, restored)
    # the restored optimizer state loads into a fresh optimizer
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(restored["optimizer_states"][0])
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)


def test_rng_states_restore_the_same_random_stream(tmp_path):
    write_checkpoint({"rng": rng_states()}, tmp_path / "c")
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_states(read_checkpoint(tmp_path / "c")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


@pytest.mark.fault(fault="a checkpoint cut short (no COMPLETE marker) or corrupted (checksum mismatch)",
                   outcome="resume=auto skips it with a warning naming why and resumes the newest valid one")
def test_partial_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    write_checkpoint({"x": torch.ones(2)}, folder / checkpoint_name(2))
    write_checkpoint({"x": torch.ones(2)}, folder / checkpoint_name(4))
    write_checkpoint({"x": torch.ones(2)}, folder / checkpoint_name(6))
    (folder / checkpoint_name(6) / "COMPLETE").unlink()  # crash before the marker
    tensors = folder / checkpoint_name(4) / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        assert latest_valid_checkpoint(tmp_path) == folder / checkpoint_name(2)
    assert "step-00000006: incomplete" in caplog.text and "step-00000004: tensors.safetensors does not match" in caplog.text
    with pytest.raises(CheckpointError, match="is incomplete"):
        resolve_resume(str(folder / checkpoint_name(6)), tmp_path)


def test_pickle_checkpoints_are_refused(tmp_path):
    pickled = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, pickled)
    with pytest.raises(CheckpointError, match="single-file \\(pickle\\) checkpoint"):
        resolve_resume(str(pickled), tmp_path)
    with pytest.raises(CheckpointError, match="pickle"):
        safe_checkpoint_io().load_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="cannot be stored without pickle"):
        write_checkpoint({"bad": object()}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_keep_last_prunes_old_checkpoints_and_leftovers(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        write_checkpoint({"s": step}, folder / checkpoint_name(step))
    (folder / "step-00000005.tmp-99999999").mkdir()
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000003", "step-00000004"]


def test_resuming_another_runs_checkpoint_names_the_differences(tmp_path):
    from omegaconf import OmegaConf

    from tuneforge.training.checkpoint import run_identity

    saved = OmegaConf.create({"model": {"name": "tiny", "seed": 0}, "adapter": {"name": "lora", "r": 8},
                              "data": {"name": "jsonl", "path": "a.jsonl"}})
    write_checkpoint({"tuneforge": {"identity": run_identity(saved)}}, tmp_path / "c")
    check_same_run(tmp_path / "c", saved)
    changed = OmegaConf.merge(saved, {"adapter": {"r": 16}, "data": {"path": "b.jsonl"}})
    with pytest.raises(CheckpointError, match=r"different run: adapter.r \(8 -> 16\); data.path \('a.jsonl' -> "
                                              r"'b.jsonl'\)"):
        check_same_run(tmp_path / "c", changed)


def test_a_checkpoint_from_before_a_setting_existed_resumes_while_that_setting_is_at_its_default(tmp_path):
    """Settings added later (model.quantization, adapter.gradient_checkpointing, ...) are missing from an older
    checkpoint's identity: unchanged while at their defaults, a difference once set otherwise."""
    from omegaconf import OmegaConf

    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.training.checkpoint import run_identity

    load_plugins([])
    cfg = compose(["model=tiny", "adapter=lora"])
    older = {key: value for key, value in run_identity(cfg).items()
             if key not in ("model.quantization", "model.compute_dtype", "adapter.gradient_checkpointing")}
    write_checkpoint({"tuneforge": {"identity": older}}, tmp_path / "c")
    check_same_run(tmp_path / "c", cfg)
    changed = OmegaConf.merge(cfg, {"adapter": {"gradient_checkpointing": True}})
    with pytest.raises(CheckpointError, match=r"different run: adapter.gradient_checkpointing \('<unset>' -> True\)"):
        check_same_run(tmp_path / "c", changed)


@pytest.mark.fault(fault="a real full file system (64 KiB tmpfs) while a checkpoint is written",
                   outcome="one line `disk full while saving checkpoint ...`; no partial checkpoint left")
def test_disk_full_while_saving_is_a_clear_error_and_leaves_nothing_half_written(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(CheckpointError, match="disk full while saving checkpoint"):
            write_checkpoint({"big": torch.zeros(200_000)}, mount_point / "step-1")
        assert list(mount_point.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_resumable_sampler_continues_mid_epoch_and_shards_like_one_order():
    sampler = ResumableSampler(10, seed=3, shuffle=True, batch_size=2)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.resume_at(1, 2)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the skip applies once
    assert sorted(full) == list(range(10)) and full != list(range(10))
    sampler.set_epoch(2)
    assert list(sampler) != full
    assert json.dumps(sampler.epoch_indices(2))  # plain ints


def test_lightning_slurm_requeue_checkpoint_is_resumed_when_newest(tmp_path):
    write_checkpoint({"global_step": 4}, tmp_path / "checkpoints" / checkpoint_name(4))
    write_checkpoint({"global_step": 7}, tmp_path / "hpc_ckpt_1.ckpt")  # as Lightning names it on SIGUSR1
    assert latest_valid_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    write_checkpoint({"global_step": 9}, tmp_path / "checkpoints" / checkpoint_name(9))
    assert latest_valid_checkpoint(tmp_path) == tmp_path / "checkpoints" / checkpoint_name(9)
