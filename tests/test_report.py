"""The base-vs-tuned table, the overfitting signal and the run report files."""

import base64
import json
import re

import matplotlib.image
import pytest

from tuneforge.evaluation.report import (
    format_comparison,
    overfitting_signal,
    read_loss_curves,
    write_report,
)
from tuneforge.testing import run_tiny_fit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


def test_comparison_table_values():
    metrics = {"base": {"exact_match": 0.1, "rouge/rougeL": 0.25, "only_base": 1.0},
               "tuned": {"exact_match": 0.9, "rouge/rougeL": 0.2}}
    lines = format_comparison(metrics).splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "change"]
    assert lines[1].split() == ["exact_match", "0.1000", "0.9000", "+0.8000"]
    assert lines[2].split() == ["only_base", "1.0000", "-"]
    assert lines[3].split() == ["rouge/rougeL", "0.2500", "0.2000", "-0.0500"]
    assert format_comparison({}) == "no evaluator metrics"


def test_overfitting_signal_from_metrics_csv(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/loss,val/loss"] + [f"0,{s},{10 - s},," for s in range(20)] + ["0,19,,12.5"]
    csv_path.write_text("\n".join(rows) + "\n")
    curves = read_loss_curves(csv_path)
    assert len(curves["train"]) == 20 and curves["val"] == [(19, 12.5)]
    info = {"perplexity/loss": {"is_loss": True, "section": "held-out", "higher_is_better": False},
            "forgetting/loss": {"is_loss": True, "section": "forgetting", "higher_is_better": False}}
    tuned = {"forgetting/loss": 1.0, "perplexity/loss": 3.0}
    signal = overfitting_signal(curves, tuned, info)
    assert signal["train_loss"] == pytest.approx((-8 + -9) / 2)  # mean of the last tenth (2 of 20 steps)
    assert signal["val_loss"] == 12.5 and signal["val_source"] == "validation during training"
    assert signal["gap"] == pytest.approx(12.5 + 8.5)
    no_val = overfitting_signal({"train": [(0, 2.0)], "val": []}, tuned, info)  # the held-out loss, not forgetting's
    assert no_val["gap"] == pytest.approx(1.0) and no_val["val_source"].startswith("perplexity evaluator")
    undeclared = overfitting_signal({"train": [(0, 2.0)], "val": []}, tuned)  # no metric declared a loss
    assert undeclared["val_loss"] is None and undeclared["gap"] is None


def test_report_files_from_metrics(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train/loss,val/loss\n0,0,3.0,\n0,1,2.0,\n0,1,,2.5\n")
    metrics = {"base": {"exact_match": 0.0, "forgetting/exact_match": 1.0},
               "tuned": {"exact_match": 1.0, "forgetting/exact_match": 0.96}, "steps": 2,
               "parameters": {"trainable": 10, "total": 100, "fraction": 0.1},
               "metric_info": {"forgetting/exact_match": {"section": "forgetting", "higher_is_better": True,
                                                          "description": "on the general set"}}}
    predictions = [{"set": "val", "prompt": "Q <b>|", "reference": "A", "base": "x", "tuned": "A"}]
    written = write_report(tmp_path, metrics, config_yaml="seed: 1\n", predictions=predictions, metrics_csv=csv_path)
    for name in ("metrics.png", "loss_curves.png"):
        _assert_png(written[name])
    md = (tmp_path / "report.md").read_text()
    assert "| metric | base | tuned | change |" in md
    assert "| exact_match | 0.0000 | 1.0000 | +1.0000 |" in md
    assert "## Forgetting" in md and "| forgetting/exact_match | 1.0000 | 0.9600 | -0.0400 |" in md
    held_out, forgetting = md.split("## Forgetting")
    assert "| exact_match |" in held_out and "forgetting/exact_match" not in held_out
    assert "- forgetting/exact_match: on the general set" in forgetting
    assert "Q &lt;b&gt;\\|" in md  # table cells are escaped
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(PNG_SIGNATURE) for i in images)
    assert "<td>Q &lt;b&gt;|</td>" in page and not re.search(r"src=['\"](?!data:)", page)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report-run")
    return run_tiny_fit(run_dir, overrides=[
        "evaluators=[perplexity,exact_match,chrf]", "evaluators.exact_match.max_new_tokens=4",
        "evaluators.chrf.max_new_tokens=4", "optim.lr=0.01", "trainer.max_steps=6", "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1"])


def test_run_writes_the_report(tiny_run):
    run_dir, metrics = tiny_run.run_dir, tiny_run.metrics
    for name in ("metrics.png", "loss_curves.png"):
        _assert_png(run_dir / name)
    md = (run_dir / "report.md").read_text()
    for name in ("exact_match", "chrf", "perplexity/loss"):
        base, tuned = metrics["base"][name], metrics["tuned"][name]
        assert f"| {name} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} |" in md
    for section in ("## Data quality", "## Training", "## Predictions", "## Settings", "tokens / s",
                    "trainable parameters", "wall time"):
        assert section in md
    html_page = (run_dir / "report.html").read_text()
    assert html_page.count("data:image/png;base64,") == 2

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["quality"]["examples"]["val"] == 6
    assert saved["throughput"]["tokens"] > 0 and saved["throughput"]["tokens_per_s"] > 0
    info = saved["metric_info"]  # what the evaluators declared, saved for compare
    assert set(info) == set(metrics["base"])
    assert info["perplexity/loss"] == {"higher_is_better": False, "primary": False, "section": "held-out",
                                       "description": "mean token loss of the held-out targets", "is_loss": True}
    assert info["exact_match"]["higher_is_better"] and not info["exact_match"]["is_loss"]
    assert "- perplexity/loss: mean token loss of the held-out targets (lower is better)" in md
    signal = saved["overfitting"]
    assert signal["val_source"] == "validation during training"
    assert signal["gap"] == pytest.approx(signal["val_loss"] - signal["train_loss"])


def test_predictions_side_by_side(tiny_run):
    every = [json.loads(line) for line in (tiny_run.run_dir / "predictions.jsonl").open()]
    rows = [row for row in every if row["set"] == "val"]
    assert len(rows) == 6  # exact_match and chrf shared one generation per held-out example
    columns = {f"{b}{suffix}" for b in ("few_shot", "retrieval") for suffix in ("", "_prompt", "_demonstrations")}
    for row in rows:
        assert set(row) == {"set", "kind", "source", "prompt", "reference", "base", "tuned", *columns}
        assert row["prompt"].endswith("<|im_start|>assistant\n")  # the final assistant turn is left out
        assert f"assistant\n{row['reference']}<|im_end|>" not in row["prompt"]
        for baseline in ("few_shot", "retrieval"):  # the same question after 4 demonstrations
            own = row["prompt"].split("<|im_end|>\n", 1)[1] if row["prompt"].startswith("<|im_start|>system") \
                else row["prompt"]  # the example's turns after its system message
            assert row[f"{baseline}_prompt"].endswith(own) and len(row[f"{baseline}_prompt"]) > len(row["prompt"])
            assert len(row[f"{baseline}_demonstrations"]) == 4  # training sources (a chat may have several turns)
            assert row[f"{baseline}_prompt"].count("<|im_start|>assistant\n") >= 5
    train = [row for row in every if row["set"] == "train"]  # the memorisation sample, tuned model only
    assert len(train) == min(30, tiny_run.metrics["data"]["train_examples"])
    assert all(set(row) == {"set", "kind", "source", "prompt", "reference", "tuned"} for row in train)
    from tuneforge.plugins.evaluators_generation import score_exact_match

    for label in ("base", "tuned"):
        expected = score_exact_match([r[label] for r in rows], [r["reference"] for r in rows])["exact_match"]
        assert tiny_run.metrics[label]["exact_match"] == expected
    for baseline in ("few_shot", "retrieval"):
        expected = score_exact_match([r[baseline] for r in rows], [r["reference"] for r in rows])["exact_match"]
        assert tiny_run.metrics["baselines"][baseline]["exact_match"] == expected
    memorised = score_exact_match([r["tuned"] for r in train], [r["reference"] for r in train])["exact_match"]
    assert tiny_run.metrics["memorisation"]["train"]["exact_match"] == memorised
