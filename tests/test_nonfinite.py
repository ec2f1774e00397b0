"""A nan/inf training loss stops the run at that step (last checkpoint kept) or skips the batch."""

import csv
import json
import warnings
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


def test_a_step_whose_every_batch_was_skipped_logs_no_train_loss(tmp_path):
    """train/loss was the last logged value repeated at every step whose batches were all skipped."""
    from helpers import train_losses

    result = run_tiny_fit(tmp_path, plugins=[NanLoss()], overrides=[
        "loss=nan_at", "trainer.on_nonfinite_loss=skip", "trainer.max_steps=4", "evaluators=[]", "baselines=[]"])
    assert result.metrics["skipped_nonfinite_batches"] == 1
    with open(tmp_path / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("step") not in (None, "")]
    logged = {int(row["step"]): row["train/loss"] for row in rows if "train/loss" in row}
    assert logged[2] == "" and all(logged[step] for step in (0, 1, 3)), logged  # the 3rd call (step 2) was nan
    assert len(train_losses(tmp_path)) == 3


def test_the_stop_message_converts_the_loss_without_a_torch_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TuneforgeError, match=r"training loss is nan at step 3"):
            run_tiny_fit(tmp_path, plugins=[NanLoss()], overrides=["loss=nan_at", "evaluators=[]", "baselines=[]"])
    assert not [w for w in caught if "requires_grad" in str(w.message)]


@pytest.mark.fault(fault='training diverges (optim.lr=1e30) with `trainer.on_nonfinite_loss=skip`: every later batch '
                         'skipped, an evaluator scores nan',
                   outcome='no stale train/loss at skipped steps; one line `the trained model is not finite: ... '
                           'training diverged: lower optim.lr, or set trainer.on_nonfinite_loss=stop ...`, not a '
                           'plugin error')
def test_diverged_weights_are_named_as_the_cause_not_the_evaluator(tmp_path):
    """optim.lr=1e30 with on_nonfinite_loss=skip: every batch after the first update is skipped and the
    perplexity evaluator gets nan; the error names the trained weights (training diverged), not the plugin."""
    from tuneforge.errors import ModelError, PluginError

    with pytest.raises(TuneforgeError) as failed:
        run_tiny_fit(tmp_path, overrides=["optim.lr=1e30", "trainer.on_nonfinite_loss=skip", "trainer.max_steps=3",
                                          "evaluators=[perplexity]", "baselines=[]"])
    line = str(failed.value)
    assert isinstance(failed.value, ModelError) and not isinstance(failed.value, PluginError)
    assert "\n" not in line and line.startswith("the trained model is not finite: its weights are so large"), line
    assert "evaluator 'perplexity' scored nan; training diverged: lower optim.lr, or set " \
           "trainer.on_nonfinite_loss=stop" in line
    assert json.loads((tmp_path / "status.json").read_text())["error"] == line


def test_nan_weights_are_found_and_a_finite_model_leaves_the_blame_with_the_evaluator():
    from tuneforge.evaluation.runner import model_not_finite
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model, tokenizer = load_tiny(TinyModelConfig())
    examples = [{"input_ids": tokenizer("hello there")["input_ids"]}]
    assert model_not_finite(model.eval(), examples, "tuned", "judge", float("nan")) is None
    name, parameter = next(iter(model.named_parameters()))
    with torch.no_grad():
        parameter.view(-1)[0] = float("inf")
    base = model_not_finite(model, examples, "base", "judge", float("inf"))
    assert str(base).startswith(f"the model evaluated for the 'base' column is not finite: its weights are not "
                                f"finite (nan or inf in {name}), so evaluator 'judge' scored inf; check the model")
