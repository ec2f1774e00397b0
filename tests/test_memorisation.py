"""Overfitting and memorisation: the train-vs-held-out table, the lowest validation loss on the curve,
and ``early_stopping.restore_best`` putting that step's adapter back."""

import csv
import json

import pytest

from tuneforge.evaluation.report import best_validation, build_blocks, overfitting_signal, render_markdown
from tuneforge.testing import run_tiny_fit


def _val_losses(run_dir) -> list:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(int(float(r["step"])), float(r["val/loss"])) for r in csv.DictReader(handle) if r.get("val/loss")]


def test_the_lowest_validation_loss_is_found_and_reported():
    curves = {"train": [(0, 3.0), (1, 2.0)], "val": [(1, 2.5), (3, 1.5), (5, 1.5), (7, 1.9)]}
    assert best_validation(curves) == (3, 1.5)  # the first of equals
    assert best_validation({"train": [(0, 1.0)], "val": []}) is None
    signal = overfitting_signal(curves, {})
    assert signal["best_val_step"] == 3 and signal["best_val_loss"] == 1.5 and signal["val_loss"] == 1.9
    metrics = {"base": {"exact_match": 0.0}, "tuned": {"exact_match": 0.5}, "steps": 8, "overfitting": signal,
               "memorisation": {"sample": 30, "train": {"exact_match": 1.0}, "held_out": {"exact_match": 0.5},
                                "intervals": {}, "gap": {"exact_match": {"value": 0.5, "low": 0.3, "high": 0.7}},
                                "flagged": ["exact_match"], "flag_gap": 0.1}}
    md = render_markdown(build_blocks(metrics))
    assert "| lowest validation loss (marked on the curve) | 1.5000 at step 3 |" in md
    assert "## Memorisation: tuned model on 30 training examples vs held-out" in md
    assert "| exact_match | 1.0000 | 0.5000 | +0.5000 | 0.3000..0.7000 | FLAG |" in md
    assert "Flagged: exact_match is 0.5 better on training examples than held-out (95% CI 0.3000..0.7000" in md


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_restores_the_adapter_of_the_best_validation(tmp_path, restore):
    """80 steps at lr 0.01 on 6 training examples overfit the tiny model: its validation loss bottoms out
    near step 11 and ends about 0.2 higher (measured on AVX2 and AVX-512 machines; lr 0.05 on all examples
    only plateaued on AVX2), so the best adapter is an earlier one: restored, the tuned held-out loss is
    that validation's loss; else it is not."""
    result = run_tiny_fit(tmp_path, overrides=[
        "callbacks=[early_stopping]", f"callbacks.early_stopping.restore_best={str(restore).lower()}",
        "callbacks.early_stopping.patience=100", "trainer.val_check_interval=2", "trainer.max_steps=80",
        "optim.lr=0.01", "data.max_examples=6", "baselines=[]", "memorisation.sample=0"])
    losses = _val_losses(tmp_path)
    best_step, best_loss = min(losses, key=lambda point: point[1])
    assert best_step != losses[-1][0] and losses[-1][1] > best_loss + 0.05  # the last is not the best
    tuned = result.metrics["tuned"]["perplexity/loss"]
    signal = json.loads((tmp_path / "metrics.json").read_text())["overfitting"]
    assert (signal["best_val_step"], signal["best_val_loss"]) == (best_step, pytest.approx(best_loss))
    if restore:
        assert tuned == pytest.approx(best_loss, abs=1e-4)
        # Lightning's CSV rows of a validation after N optimizer steps say step N - 1
        assert result.metrics["train"]["early_stopping/restored_step"] == best_step + 1
        assert "early stopping restored the adapter of step" in (tmp_path / "report.md").read_text()
    else:
        assert abs(tuned - best_loss) > 0.005  # the adapter of the last step (trained past the last check)
        assert "early_stopping/restored_step" not in result.metrics["train"]
