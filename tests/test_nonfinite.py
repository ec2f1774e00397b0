"""A nan/inf training loss stops the run at that step (last checkpoint kept) or skips the batch."""

import json
from dataclasses import dataclass

import pytest
import torch

import tuneforge
from tuneforge.training.checkpoint import latest_valid_checkpoint
from tuneforge.errors import TuneforgeError
from tuneforge.losses import LossOutput
from tuneforge.testing import run_tiny_fit


@dataclass
class NanAtConfig:
    """call: the training-loss call (1-based) that returns nan."""

    call: int = 3


class NanLoss:
    """A loss plugin that is cross entropy except for one nan."""

    __name__ = "nan_loss"

    @tuneforge.hookimpl
    def tuneforge_losses(self):
        from tuneforge.plugins.losses import CrossEntropyConfig, build_cross_entropy

        def build(config, context):
            inner = build_cross_entropy(CrossEntropyConfig(), context)
            calls = {"n": 0}

            def loss(model, batch):
                output = inner(model, batch)
                if model.training:
                    calls["n"] += 1
                    if calls["n"] == config.call:
                        return LossOutput(output.loss * torch.tensor(float("nan")), output.num_tokens)
                return output

            return loss

        return [tuneforge.LossSpec("nan_at", NanAtConfig, build=build)]


def test_nonfinite_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TuneforgeError, match=r"training loss is nan at step 3 .*trainer.on_nonfinite_loss=skip"):
        run_tiny_fit(tmp_path, plugins=[NanLoss()], overrides=["loss=nan_at", "checkpoint.every_n_steps=1"])
    assert latest_valid_checkpoint(tmp_path).name == "step-00000002"
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "nan at step 3" in status["error"]
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.json").exists()


def test_nonfinite_loss_can_skip_the_batch_and_count_it(tmp_path):
    result = run_tiny_fit(tmp_path, plugins=[NanLoss()],
                          overrides=["loss=nan_at", "trainer.on_nonfinite_loss=skip", "trainer.max_steps=4"])
    assert result.metrics["skipped_nonfinite_batches"] == 1
    assert result.metrics["steps"] == 4
