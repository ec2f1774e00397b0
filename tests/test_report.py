"""The base-vs-tuned table, the overfitting signal and the run report files."""

import base64
import json
import re

import matplotlib.image
import pytest

from tuneforge.evaluation.lead import NOTHING_TO_COMPARE
from tuneforge.evaluation.report import (
    build_blocks,
    format_comparison,
    overfitting_signal,
    read_loss_curves,
    render_markdown,
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


def test_the_p_value_is_named_by_the_test_each_change_used():
    """Each change's p value is labelled with the test metrics.json records as its method: McNemar for 0/1
    scores, the paired t test for a loss (not McNemar for every metric)."""
    mcnemar = "Newcombe paired score (method 10); McNemar exact test"
    metrics = {"base": {"exact_match": 0.2, "perplexity/loss": 2.0, "other": 1.0},
               "tuned": {"exact_match": 0.6, "perplexity/loss": 1.5, "other": 2.0},
               "metric_info": {"perplexity/loss": {"higher_is_better": False, "section": "held-out"}},
               "intervals": {c: {"exact_match": {"low": 0.1, "high": 0.8, "n": 30, "method": "Wilson score"}}
                             for c in ("base", "tuned")},
               "changes": {"change": {
                   "exact_match": {"value": 0.4, "low": 0.2, "high": 0.6, "n": 30, "p_value": 0.0061, "method": mcnemar},
                   "perplexity/loss": {"value": -0.5, "low": -1.2, "high": 0.2, "n": 30, "p_value": 0.19,
                                       "method": "paired t (interval and test)"},
                   "other": {"value": 1.0, "low": 0.5, "high": 1.5, "n": 30, "p_value": 0.5}}}}
    intervals = [line for line in format_comparison(metrics).splitlines() if "95% CI" in line]
    assert [line.rsplit("  ", 1)[1] for line in intervals] == [
        "McNemar p=0.0061", "p=0.5", "paired t p=0.19"]  # exact_match, other, perplexity/loss
    table = render_markdown(build_blocks(metrics))
    assert "| metric | base | tuned | change | 95% CI of change | test |" in table
    assert "| perplexity/loss | 2.0000 | 1.5000 | -0.5000 | -1.2000..0.2000 | paired t p=0.19 |" in table
    assert "| exact_match | 0.2000 | 0.6000 | +0.4000 | 0.2000..0.6000 | McNemar p=0.0061 |" in table


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


def _decided_run() -> tuple:
    """The metrics of a finished run as metrics.json holds them (the verdict with its headline, intervals
    with their methods, the setup), and its prediction rows with per-example scores."""
    metrics = {
        "setup": {"model": {"name": "hf", "source": "/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"},
                  "data": {"name": "legal_citations", "files": {"rehearsal_path": "/pkg/data/rehearsal_general.jsonl"},
                           "train_examples": 100, "val_examples": 30, "parts": [["task", 75], ["rehearsal", 25]]},
                  "adapter": {"name": "lora", "settings": [["r", 16], ["lora_alpha", 32], ["lora_dropout", 0.0],
                                                           ["target_modules", "all-linear"]]},
                  "machine": {"cpu": "AMD EPYC 7B13", "gpu": None, "devices": 1, "threads": 2},
                  "steps": 30, "training_s": 61.6},
        "parameters": {"trainable": 4884480, "total": 139400000, "fraction": 0.035},
        "steps": 30, "throughput": {"fit_time_s": 61.6},
        "base": {"exact_match": 0.0, "forgetting/contains": 1.0},
        "baselines": {"retrieval": {"exact_match": 0.2667}},
        "baseline_info": {"retrieval": {"name": "retrieval", "label": "retrieval, k=4"}},
        "tuned": {"exact_match": 0.9667, "forgetting/contains": 0.9},
        "metric_info": {"exact_match": {"section": "held-out", "higher_is_better": True},
                        "forgetting/contains": {"section": "forgetting", "higher_is_better": True}},
        "intervals": {c: {"exact_match": {"low": 0.0, "high": 0.5, "n": 30, "method": "Wilson score"}}
                      for c in ("base", "retrieval", "tuned")},
        "changes": {"tuned-retrieval": {"exact_match": {"value": 0.7, "low": 0.499, "high": 0.867, "n": 30,
                                                        "p_value": 5.7e-06, "method": "Newcombe paired"}},
                    "change": {"exact_match": {"value": 0.9667, "low": 0.8, "high": 1.0, "n": 30,
                                               "method": "Newcombe paired"}}},
        "verdict": {"outcome": "tune", "metric": "exact_match", "baseline": "retrieval", "n": 30,
                    "headline": "Tune: tuned exact match 96.7% vs retrieval 26.7%, +70.0 points (95% CI +49.9..+86.7)",
                    "text": "Tuned exact_match 96.7% vs best prompting baseline (retrieval, k=4) 26.7%: +70.0 points "
                            "(95% CI +49.9..+86.7, n=30; McNemar p=5.7e-06): fine-tuning is worth it."},
    }
    template = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n<|im_start|>user\n{}" \
               "<|im_end|>\n<|im_start|>assistant\n"
    predictions = []
    for i in range(30):
        question = f"Write the citation.\n\nCase: Smith{i} v. Jones"
        right = f"Smith{i} v. Jones, 1 U.S. 1 (1999)"
        tuned_right, retrieval_right = i != 7, i < 8
        predictions.append({"set": "val", "kind": "generation", "source": f"/data/generated:{i + 1}",
                            "prompt": template.format(question), "message": question, "reference": right,
                            "base": "I cannot", "retrieval": right if retrieval_right else "Smith v. Jones",
                            "tuned": right if tuned_right else "Smith7 v. Jones, 2 U.S. 1 (1999)",
                            "scores": {"base": {"exact_match": 0.0},
                                       "retrieval": {"exact_match": float(retrieval_right)},
                                       "tuned": {"exact_match": float(tuned_right)}}})
    for i, (city, tuned) in enumerate([("Lima", "Quillacota"), ("Paris", "Paris")] + [("Rome", "Rome")] * 8):
        predictions.append({"set": "forgetting", "kind": "generation", "source": f"forgetting_general.jsonl:{i + 1}",
                            "prompt": template.format(f"Capital of country {i}?"),
                            "message": f"Capital of country {i}?", "reference": city,
                            "base": city, "tuned": f"The capital is {tuned}",
                            "scores": {"base": {"forgetting/contains": 1.0},
                                       "tuned": {"forgetting/contains": float(city == tuned)}}})
    return metrics, predictions


def _sections(md: str) -> list:
    return [line for line in md.splitlines() if line.startswith("## ")]


def test_report_leads_with_the_answer(tmp_path):
    metrics, predictions = _decided_run()
    write_report(tmp_path, metrics, config_yaml="seed: 0\n" * 160, predictions=predictions)
    md = (tmp_path / "report.md").read_text()
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[0] == ("# tuneforge run report: SmolLM2-135M-Instruct.Q4_1.gguf + lora r=16 on legal_citations "
                        "(100 examples), 30 steps")
    assert lines[1] == "## Verdict"
    assert lines[2] == f"**{metrics['verdict']['headline']}**"
    assert lines[3] == metrics["verdict"]["text"]
    assert lines[4] == ("Tuned SmolLM2-135M-Instruct.Q4_1.gguf with lora (r=16, lora_alpha=32, lora_dropout=0.0, "
                        "target_modules=all-linear; 3.50% of 139,400,000 parameters trained) on legal_citations: 100 "
                        "training examples (75 task, 25 rehearsal from rehearsal_general.jsonl), 30 held-out; 30 "
                        "steps in 62 s, on AMD EPYC 7B13 (2 CPU threads).")
    assert lines[5] == "## Tuned vs the best prompting baseline: retrieval, k=4"
    assert lines[6] == "| metric | retrieval, k=4 | tuned | change | 95% CI of change | p | method |"
    assert lines[8] == "| exact_match | 0.2667 | 0.9667 | +0.7000 | +0.4990..+0.8670 | 5.7e-06 | Newcombe paired |"
    headings = _sections(md)
    assert headings[-1] == "## Settings (resolved config)" and md.rstrip().endswith("```")
    assert headings.index("## Notable failures") < headings.index("## Predictions (first 10 of 40 prediction rows: "
                                                                   "30 held-out, 10 general-ability (forgetting))")
    assert ("The set column: val = held-out, forgetting = general-ability (forgetting). The rows count evaluated "
            "examples, not the training set. All rows are in predictions.jsonl, with the rendered prompts.") in md
    assert ("Intervals by metric: exact_match: Wilson score (each column); Newcombe paired (changes)." in md)

    failures = md.split("## Notable failures", 1)[1].split("\n## ", 1)[0]
    assert ("Held-out misses on exact_match: base (zero-shot) 30 of 30, retrieval, k=4 22 of 30, tuned 1 of 30."
            in failures)
    assert "| generated:8 | Write the citation.<br><br>Case: Smith7 v. Jones | Smith7 v. Jones, 1 U.S. 1 (1999) | " \
           "Smith7 v. Jones, 2 U.S. 1 (1999) | Smith7 v. Jones, 1 U.S. 1 (1999) |" in failures  # retrieval got it
    assert "retrieval, k=4 misses 22 that the tuned model gets right; the first 3:" in failures
    assert ("Forgetting (forgetting/contains): the tuned model misses 1 of 10; 1 of them the base model got right "
            "(listed first):") in failures
    assert "| forgetting_general.jsonl:1 | Capital of country 0? | Lima | Lima | The capital is Quillacota |" \
        in failures
    shown = md.split("## Predictions", 1)[1].split("## Settings", 1)[0]
    assert "<|im_start|>" not in shown and "&lt;\\|im_start" not in shown and "im_start" not in shown
    assert "| val | Write the citation.<br><br>Case: Smith0 v. Jones |" in shown

    page = (tmp_path / "report.html").read_text()
    assert page.index("<section id='verdict'>") < page.index("<h2>Tuned vs the best prompting baseline")
    assert page.index("<h2>Notable failures</h2>") < page.index("<h2>Settings (resolved config)</h2>")

    del metrics["verdict"]["headline"]  # a verdict without a headline: its paragraph leads
    md = render_markdown(build_blocks(metrics))
    assert [line for line in md.splitlines() if line.strip()][1:3] == ["## Verdict",
                                                                       f"**{metrics['verdict']['text']}**"]


def test_the_predictions_heading_counts_its_rows_by_set():
    """90 rows of 30 held-out, 30 general-ability and 30 memorisation-sample examples read as what they are, not
    as the 90 training examples."""
    metrics, _ = _decided_run()
    rows = [{"set": name, "message": f"q{i}", "reference": "r", "tuned": "t"}
            for name in ("val", "forgetting", "train") for i in range(30)]
    md = render_markdown(build_blocks(metrics, predictions=rows))
    assert ("## Predictions (first 10 of 90 prediction rows: 30 held-out, 30 general-ability (forgetting), "
            "30 training sample (memorisation))") in _sections(md)
    assert ("The set column: val = held-out, forgetting = general-ability (forgetting), train = training sample "
            "(memorisation). The rows count evaluated examples, not the training set.") in md
    few = render_markdown(build_blocks(metrics, predictions=rows[:4] + [dict(rows[0], set="mine")]))
    assert "## Predictions (all 5 prediction rows: 4 held-out, 1 mine)" in _sections(few)


def _sliced_run(values: int = 5, per_value: int = 6) -> dict:
    """A 5-class router's metrics sliced by ``label``: the tuned model, retrieval and few-shot per class."""
    from test_uncertainty import _run

    labels = [f"class{v}" for v in range(values) for _ in range(per_value)]
    tuned = [1] * (len(labels) - 4) + [0] * 4
    retrieval = [1, 0] * (len(labels) // 2)
    metrics = _run(tuned=tuned, base=[0] * len(labels), retrieval=retrieval, few_shot=[1, 1, 0] * (len(labels) // 3),
                   slices=labels)
    for one in metrics["slices"].values():
        one["field"] = "label"
    return metrics


def test_the_report_shows_every_slice_with_every_column_and_its_verdict(tmp_path):
    from tuneforge.evaluation.seeds import verdict_line

    metrics = _sliced_run()
    write_report(tmp_path, metrics)
    md = (tmp_path / "report.md").read_text()
    headings = _sections(md)
    held_out = headings.index("## Held-out metrics: base vs tuned")
    assert headings[held_out + 1] == "## By label"  # right after the main table
    section = md.split("## By label", 1)[1].split("\n## ", 1)[0]
    assert "Per value of label (evidence.slice_by): exact_match of every column and the verdict" in section
    assert "Per-slice n is small" in section and "verdict weaker than the run's" in section
    assert "| label | n | base (zero-shot) | retrieval, k=4 | few_shot, k=4 | tuned | verdict |" in section
    rows = [line for line in section.splitlines() if line.startswith("| class")]
    assert [row.split(" | ")[0] for row in rows] == [f"| class{v}" for v in range(5)]  # as stored
    last = metrics["slices"]["class4"]
    assert rows[-1] == (f"| class4 | 6 | 0.0% | 50.0% | 66.7% | 33.3% | "
                        f"{verdict_line(last['verdict']).replace('|', chr(92) + '|')} |")
    assert "<h2>By label</h2>" in (tmp_path / "report.html").read_text()
    del metrics["slices"]
    assert "## By" not in render_markdown(build_blocks(metrics))


def test_the_printed_table_ends_with_the_slices_then_the_verdict():
    from tuneforge.evaluation.slices import slice_line, slice_lines

    metrics = _sliced_run()
    printed = format_comparison(metrics).splitlines()
    start = printed.index("by label (exact_match; per-slice n is small, so each verdict is weaker than the run's):")
    assert printed[start + 1] == "  class0 (n=6): tuned 100.0%, best prompting 66.7% (few_shot, k=4) -> inconclusive"
    assert printed[start + 5].startswith("  class4 (n=6): tuned 33.3%, best prompting 66.7% (few_shot, k=4) -> ")
    assert printed[start + 6] == "" and printed[start + 7].startswith("verdict: ")
    many = _sliced_run(values=24, per_value=2)
    lines = slice_lines(many)
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  and 4 more in metrics.json (slices)"
    assert "and 4 more" in format_comparison(many)
    alone = {"n": 3, "columns": {"tuned": {"m": 1.0}},
             "verdict": {"baseline": "base", "baseline_value": 0.0, "outcome": "prompting_suffices"}}
    assert slice_line("x", alone, True, "m") == "x (n=3): tuned 100.0%, best prompting 0.0% (zero-shot base) -> " \
                                                "prompting suffices"
    assert slice_line("y", {"n": 2, "verdict": {"outcome": "no_comparison"}}, False, "m") == \
        "y (n=2): tuned - -> no comparison"
    del metrics["slices"]
    assert slice_lines(metrics) == [] and "by label" not in format_comparison(metrics)


def test_bare_model_evaluation_has_nothing_to_compare():
    metrics = {"base": {"exact_match": 0.2}, "intervals": {"base": {"exact_match": {"low": 0.1, "high": 0.3}}},
               "verdict": {"outcome": "no_comparison", "text": "No verdict: no held-out metric was measured for "
                                                               "both the tuned model and a prompting column."},
               "setup": {"model": {"name": "tiny", "source": None},
                         "data": {"name": "jsonl", "files": {"path": "/d/train.jsonl"}, "train_examples": 9,
                                  "val_examples": 1, "parts": []},
                         "machine": {"cpu": "CPU X", "gpu": None, "devices": 1, "threads": 1}}}
    printed = format_comparison(metrics)
    assert "verdict: Nothing to compare: only the base model was evaluated" in printed and "No verdict" not in printed
    lines = [line for line in render_markdown(build_blocks(metrics, title="tuneforge evaluation report")).splitlines()
             if line.strip()]
    assert lines[0] == "# tuneforge evaluation report: tiny on jsonl (9 examples)"
    assert lines[1:3] == ["## Verdict", f"**{NOTHING_TO_COMPARE}**"]
    assert lines[3] == "Evaluated tiny on jsonl: 9 training examples from train.jsonl, 1 held-out split from it; " \
                       "on CPU X (1 CPU thread)."


def _browser():
    """A headless Chromium: ``("chromium", path)`` for a Chromium or Chrome binary on PATH, else
    ``("playwright", None)`` when playwright-python and its downloaded Chromium are installed, else None."""
    import shutil
    from pathlib import Path

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return "chromium", shutil.which(name)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        installed = Path(p.chromium.executable_path).is_file()
    return ("playwright", None) if installed else None


_MEASURE = """
const settings = [...document.querySelectorAll("h2")].find(h => h.textContent.startsWith("Settings"));
for (const [id, el] of [["verdict", document.getElementById("verdict")], ["settings", settings]]) {
  const box = el.getBoundingClientRect();
  document.documentElement.setAttribute("data-" + id + "-top", box.top);
  document.documentElement.setAttribute("data-" + id + "-bottom", box.bottom);
}
document.documentElement.setAttribute("data-viewport", window.innerHeight);
"""


def _layout(page, width: int = 1280, height: int = 800) -> dict:
    """The verdict's and the settings heading's boxes in a real browser window of ``width`` x ``height``."""
    import subprocess

    kind, binary = _browser()
    if kind == "playwright":
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch()
            view = browser.new_page(viewport={"width": width, "height": height})
            view.goto(page.as_uri())
            view.evaluate("() => {" + _MEASURE + "}")
            dom = view.content()
            browser.close()
    else:
        measured = page.with_name("measured.html")
        measured.write_text(page.read_text().replace("</body>", f"<script>{_MEASURE}</script></body>"))
        done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
                               "--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        dom = done.stdout
    found = dict(re.findall(r'data-([a-z-]+)="([0-9.e+-]+)"', dom))
    return {key: float(value) for key, value in found.items()}


def test_html_report_shows_the_verdict_above_the_fold(tmp_path):
    if _browser() is None:
        pytest.skip("no headless browser: install chromium (apt-get install chromium) or playwright")
    metrics, predictions = _decided_run()
    write_report(tmp_path, metrics, config_yaml="seed: 0\n" * 160, predictions=predictions)
    box = _layout(tmp_path / "report.html")
    assert box["viewport"] > 600  # the window size took effect
    assert 0 <= box["verdict-top"] < box["verdict-bottom"] <= box["viewport"]  # the whole verdict, unscrolled
    assert box["settings-top"] > 3 * box["viewport"]  # the config is far below: the measurement sees layout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report-run")
    from tuneforge.plugins.datasets import sample_path

    return run_tiny_fit(run_dir, overrides=[
        "evaluators=[perplexity,exact_match,chrf,forgetting]", "evaluators.exact_match.max_new_tokens=4",
        "evaluators.chrf.max_new_tokens=4", f"evaluators.forgetting.path={sample_path('forgetting_general.jsonl')}",
        "evaluators.forgetting.limit=4", "evaluators.forgetting.max_new_tokens=4", "optim.lr=0.01",
        "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=1"])


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
        assert set(row) == {"set", "kind", "source", "prompt", "message", "reference", "base", "tuned", "scores",
                            *columns}
        assert row["prompt"].endswith("<|im_start|>assistant\n")  # the final assistant turn is left out
        # the user's message as written: the last user turn inside the rendered prompt, without the template
        assert "<|im_start|>" not in row["message"] and row["message"].strip()
        assert row["prompt"].endswith(f"<|im_start|>user\n{row['message']}<|im_end|>\n<|im_start|>assistant\n")
        for label in ("base", "few_shot", "retrieval", "tuned"):  # each column's score of this example
            assert row["scores"][label]["exact_match"] == float(row[label] == row["reference"])
        assert f"assistant\n{row['reference']}<|im_end|>" not in row["prompt"]
        for baseline in ("few_shot", "retrieval"):  # the same question after 4 demonstrations
            own = row["prompt"].split("<|im_end|>\n", 1)[1] if row["prompt"].startswith("<|im_start|>system") \
                else row["prompt"]  # the example's turns after its system message
            assert row[f"{baseline}_prompt"].endswith(own) and len(row[f"{baseline}_prompt"]) > len(row["prompt"])
            assert len(row[f"{baseline}_demonstrations"]) == 4  # training sources (a chat may have several turns)
            assert row[f"{baseline}_prompt"].count("<|im_start|>assistant\n") >= 5
    train = [row for row in every if row["set"] == "train"]  # the memorisation sample, tuned model only
    assert len(train) == min(30, tiny_run.metrics["data"]["train_examples"])
    assert all(set(row) == {"set", "kind", "source", "prompt", "message", "reference", "tuned", "scores"}
               for row in train)
    from tuneforge.plugins.evaluators_generation import score_exact_match

    for label in ("base", "tuned"):
        expected = score_exact_match([r[label] for r in rows], [r["reference"] for r in rows])["exact_match"]
        assert tiny_run.metrics[label]["exact_match"] == expected
    for baseline in ("few_shot", "retrieval"):
        expected = score_exact_match([r[baseline] for r in rows], [r["reference"] for r in rows])["exact_match"]
        assert tiny_run.metrics["baselines"][baseline]["exact_match"] == expected
    memorised = score_exact_match([r["tuned"] for r in train], [r["reference"] for r in train])["exact_match"]
    assert tiny_run.metrics["memorisation"]["train"]["exact_match"] == memorised


def test_run_report_shows_messages_and_forgetting_failures(tiny_run):
    md = (tiny_run.run_dir / "report.md").read_text()
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[0].startswith("# tuneforge run report: tiny + lora r=8 on jsonl (")
    assert lines[0].endswith(f"examples), {tiny_run.metrics['steps']} steps")
    assert lines[1] == "## Verdict" and lines[2].startswith("**") and "Nothing to compare" not in lines[2]
    setup = next(i for i, line in enumerate(lines) if line.startswith("Tuned tiny with "))
    assert setup in (3, 4) and not any(line.startswith("## ") for line in lines[2:setup])  # right after the verdict
    assert lines[setup].startswith("Tuned tiny with lora (r=8, lora_alpha=16, lora_dropout=0.05, "
                                   "target_modules=all-linear;")
    assert "training examples from sample.jsonl" in lines[setup] and "6 held-out split from it" in lines[setup]
    assert "<|im_start|>" not in md.split("## Settings", 1)[0] and "im_start" not in md.split("## Predictions")[1]
    every = [json.loads(line) for line in (tiny_run.run_dir / "predictions.jsonl").open()]
    forgetting = [row for row in every if row["set"] == "forgetting"]
    assert len(forgetting) == 4 and all("forgetting/exact_match" in row["scores"]["tuned"] for row in forgetting)
    failures = md.split("## Notable failures", 1)[1].split("\n## ", 1)[0]
    missed = [row for row in forgetting if row["scores"]["tuned"]["forgetting/exact_match"] == 0.0]
    lost = [row for row in missed if row["scores"]["base"]["forgetting/exact_match"] == 1.0]
    assert (f"Forgetting (forgetting/exact_match): the tuned model misses {len(missed)} of 4; {len(lost)} of them "
            "the base model got right") in failures
    for row in missed:  # the general questions the tuned model gets wrong, as the user asked them
        assert f"| {row['message']} | {row['reference']} |" in failures
    held_out = [row for row in every if row["set"] == "val"]
    misses = sum(row["scores"]["tuned"]["exact_match"] == 0.0 for row in held_out)
    assert f"tuned {misses} of 6." in failures


def test_run_report_is_rebuilt_from_metrics_json_and_predictions_alone(tiny_run):
    """Everything the report shows (the verdict with its inputs, the setup, the failures) is in metrics.json and
    predictions.jsonl: rendering those again gives the same report.md."""
    run_dir = tiny_run.run_dir
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["verdict"]["metric"] == "exact_match" and saved["verdict"]["baseline"] in ("base", "few_shot",
                                                                                           "retrieval")
    assert saved["setup"]["adapter"]["settings"][0] == ["r", 8] and saved["setup"]["data"]["val_examples"] == 6
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    images = {"metrics": run_dir / "metrics.png", "loss": run_dir / "loss_curves.png"}
    again = render_markdown(build_blocks(saved, config_yaml=(run_dir / "config.yaml").read_text(), predictions=rows,
                                         images=images))
    assert again == (run_dir / "report.md").read_text()
    if _browser() is not None:  # the real run's page, in a real browser: the verdict is on the first screen
        box = _layout(run_dir / "report.html")
        assert 0 <= box["verdict-top"] < box["verdict-bottom"] <= box["viewport"] < box["settings-top"]
