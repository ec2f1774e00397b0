"""The default demo's pieces, fast: the legal-citation generator, the forgetting set, the
``targets`` checks and the experiment config (run end to end on the tiny model).

The real-model run is in ``test_demo_slow.py`` (``-m slow``).
"""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

import tuneforge
from tuneforge.plugins import legal_citations as lc
from tuneforge.plugins import targets

CITATION = re.compile(
    r"^(?P<case>.+ v\. .+), (?P<volume>\d+) (?P<reporter>U\.S\.|F\.2d|F\.3d|F\.4th|F\. Supp\.(?: [23]d)?) "
    r"(?P<page>\d+) \((?:(?P<court>[^()]+) )?(?P<year>\d{4})\)$")


def test_generator_is_deterministic_and_seeded():
    assert lc.generate(50, 10, seed=3) == lc.generate(50, 10, seed=3)
    assert lc.generate(50, 10, seed=3) != lc.generate(50, 10, seed=4)


def test_held_out_set_does_not_depend_on_the_training_size():
    train_100, val_100 = lc.generate(100, 30, seed=0)
    train_25, val_25 = lc.generate(25, 30, seed=0)
    assert val_25 == val_100
    assert train_25 == train_100[:25]


def test_train_and_held_out_never_share_a_case():
    train, val = lc.generate(300, 60, seed=1)
    train_cases = [r["input"].splitlines()[0] for r in train]
    val_cases = [r["input"].splitlines()[0] for r in val]
    assert len(set(train_cases)) == len(train_cases)
    assert len(set(val_cases)) == len(val_cases)
    assert not set(train_cases) & set(val_cases)
    assert not {r["output"] for r in train} & {r["output"] for r in val}


def test_citations_follow_the_facts():
    reporters = {name: abbr for name, abbr, *_ in lc.REPORTERS}
    courts = {name: abbr for name, abbr, *_ in lc.COURTS}
    train, val = lc.generate(100, 30, seed=0)
    for record in train + val:
        facts = dict(line.split(": ", 1) for line in record["input"].splitlines())
        match = CITATION.match(record["output"])
        assert match, record["output"]
        assert match["case"] == facts["Case"]
        assert match["volume"] == facts["Volume"] and match["page"] == facts["First page"]
        assert match["reporter"] == reporters[facts["Reporter"]]
        assert (match["court"] or "") == courts[facts["Court"]]
        assert match["year"] == facts["Year"]
        assert record["instruction"] == lc.INSTRUCTION


def test_training_examples_cover_every_court_evenly():
    train, _ = lc.generate(100, 30, seed=0)
    courts = Counter(dict(line.split(": ", 1) for line in r["input"].splitlines())["Court"] for r in train)
    assert set(courts) == {name for name, *_ in lc.COURTS}
    assert max(courts.values()) - min(courts.values()) <= 1
    first = {dict(line.split(": ", 1) for line in r["input"].splitlines())["Court"] for r in train[:len(lc.COURTS)]}
    assert len(first) == len(lc.COURTS)  # any prefix is as balanced as it can be


def test_dataset_plugin_tokenizes_and_honours_max_examples():
    from tuneforge.plugins.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    splits = lc.load_legal_citations(lc.LegalCitationsConfig(n_train=20, n_val=5, max_examples=8, max_length=1024), tokenizer)
    assert len(splits.train) == 8 and len(splits.val) == 5
    assert splits.stats["train_examples"] == 8 and splits.stats["val_examples"] == 5
    example = splits.val[0]
    assert example["messages"][-1] == {"role": "assistant", "content": example["record"]["output"]}
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tokenizer.decode(trained).startswith(example["record"]["output"])


def test_write_jsonl_matches_the_plugin(tmp_path):
    train_path, val_path = lc.write_jsonl(tmp_path, n_train=12, n_val=4, seed=2)
    train, val = lc.generate(12, 4, seed=2)
    assert [json.loads(line) for line in train_path.read_text().splitlines()] == train
    assert [json.loads(line) for line in val_path.read_text().splitlines()] == val


def test_forgetting_set_is_shipped_and_well_formed():
    from tuneforge.plugins.datasets import sample_path

    rows = [json.loads(line) for line in Path(sample_path("forgetting_general.jsonl")).read_text().splitlines()]
    assert 20 <= len(rows) <= 40
    assert all(set(r) == {"instruction", "output"} and r["output"].strip() for r in rows)
    assert len({r["instruction"] for r in rows}) == len(rows)


@pytest.mark.parametrize("expression, metrics, passed", [
    ("base:exact_match <= 0.10", {"base": {"exact_match": 0.1}}, True),
    ("base:exact_match <= 0.10", {"base": {"exact_match": 0.1334}}, False),
    ("tuned:exact_match >= 0.9", {"tuned": {"exact_match": 0.9667}}, True),
    ("change:forgetting/contains >= -0.05",
     {"base": {"forgetting/contains": 1.0}, "tuned": {"forgetting/contains": 0.9667}}, True),
    ("change:forgetting/contains >= -0.05",
     {"base": {"forgetting/contains": 1.0}, "tuned": {"forgetting/contains": 0.9}}, False),
    ("data:train_examples <= 100", {"data": {"train_examples": 100}}, True),
    ("wall_time_s < 900", {"wall_time_s": 901.5}, False),
    ("tuned:exact_match >= 0.9", {"base": {"exact_match": 1.0}}, False),  # missing counts as a miss
])
def test_target_checks(expression, metrics, passed):
    result = targets.check_targets({"t": expression}, metrics)
    assert result["passed"] is passed and result["checks"][0]["passed"] is passed


def test_malformed_target_is_a_config_error():
    import tuneforge

    with pytest.raises(tuneforge.ConfigError, match="cannot read check"):
        targets.parse_check("tuned exact match is high")
    with pytest.raises(tuneforge.ConfigError, match="cannot read check 'tuned:exact_match => 0.9'"):
        targets.TargetsConfig(checks={"x": "tuned:exact_match => 0.9"})
    spec = {s.name: s for s in targets.tuneforge_callbacks()}["targets"]
    assert spec.build is None and spec.on_run_end is targets.report_targets  # no Lightning callback needed


def test_targets_only_judge_completed_runs(tmp_path, capsys):
    config = targets.TargetsConfig(checks={"t": "steps >= 1"}, title="demo")
    assert targets.report_targets(config, {"steps": 0}, "failed", tmp_path) is None
    assert not (tmp_path / "targets.json").exists()
    result = targets.report_targets(config, {"steps": 3}, "completed", tmp_path)
    assert result["passed"] and json.loads((tmp_path / "targets.json").read_text()) == result
    assert "== demo ==" in capsys.readouterr().out


def test_targets_block_lists_pass_and_fail():
    result = targets.check_targets({"good": "tuned:em >= 0.5", "bad": "base:em <= 0.1"},
                                   {"base": {"em": 0.5}, "tuned": {"em": 0.75}})
    text = targets.format_targets(result, "demo")
    assert "PASS  good" in text and "FAIL  bad" in text and "1 of 2 targets missed" in text


def test_experiment_config_composes(tmp_path, monkeypatch, smollm2_placeholder):
    from tuneforge.host.compose import compose, load_plugins

    # validation wants the model file to exist; the fast suite runs without the real GGUF
    cfg = compose(["+experiment=legal_citations"], load_plugins(["+experiment=legal_citations"]))
    assert cfg.model.name == "hf" and cfg.model.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert cfg.data.name == "legal_citations" and cfg.data.n_train + cfg.data.n_rehearsal <= 100
    assert set(cfg.evaluators) >= {"exact_match", "forgetting"}
    assert Path(cfg.evaluators.forgetting.path).is_file()
    assert cfg.adapter.name == "lora" and cfg.threads == 2
    assert "tuned:exact_match >= 0.90" in cfg.callbacks.targets.checks.values()
    assert list(cfg.baselines) == ["few_shot", "retrieval", "majority", "rag"] and cfg.baselines.rag.leak_check == "refuse"
    assert Path(cfg.baselines.rag.corpus).name == "citation_rules.md" and Path(cfg.baselines.rag.corpus).is_file()
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "elsewhere"))  # no GGUF: refused before loading
    with pytest.raises(tuneforge.ConfigError, match=r"^model\.path: GGUF file not found: .*elsewhere"):
        compose(["+experiment=legal_citations"], load_plugins(["+experiment=legal_citations"]))


def test_demo_pipeline_on_the_tiny_model(tmp_path, capsys):
    """The experiment end to end with the tiny random model: the targets block is printed and saved."""
    from tuneforge.testing import run_tiny_fit

    result = run_tiny_fit(tmp_path / "run", overrides=[
        "+experiment=legal_citations", "model=tiny", "threads=1", "trainer.max_steps=2",
        "data.n_train=8", "data.n_rehearsal=2", "data.n_val=3", "evaluators.exact_match.max_new_tokens=3",
        "evaluators.forgetting.max_new_tokens=3", "evaluators.forgetting.limit=3"])
    assert result.metrics["data"]["train_examples"] == 10  # 8 citations + 2 rehearsal
    saved = json.loads((tmp_path / "run" / "targets.json").read_text())
    labels = [c["label"] for c in saved["checks"]]
    assert "tuned exact match at least 90%" in labels
    by_label = {c["label"]: c for c in saved["checks"]}
    assert by_label["at most 100 training examples"]["value"] == 10
    assert by_label["at most 100 training examples"]["passed"] is True
    assert by_label["tuned exact match at least 90%"]["passed"] is False  # a random model writes no citation
    assert saved["passed"] is False
    assert "legal citations demo targets" in capsys.readouterr().out
    # the report leads with the answer: the verdict, then what was tuned on which data and machine
    md = (tmp_path / "run" / "report.md").read_text()
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[0] == "# tuneforge run report: tiny + lora r=16 on legal_citations (10 examples), 2 steps"
    assert lines[1] == "## Verdict" and lines[2].startswith("**")
    assert result.metrics["verdict"].get("headline", result.metrics["verdict"]["text"]) in lines[2]
    setup = next(i for i, line in enumerate(lines) if line.startswith("Tuned "))
    assert setup in (3, 4) and not any(line.startswith("## ") for line in lines[2:setup])
    assert lines[setup].startswith("Tuned tiny with lora (r=16, lora_alpha=32, lora_dropout=0.0, "
                                   "target_modules=all-linear; ")
    assert ("on legal_citations: 10 training examples (8 task, 2 rehearsal from rehearsal_general.jsonl), "
            "3 held-out; 2 steps in ") in lines[setup]
    assert lines[setup].endswith("(1 CPU thread).")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["setup"]["machine"]["threads"] == 1
    # prompts as the user wrote them (no chat template), and the forgetting misses among the notable failures
    before_config = md.split("## Settings (resolved config)", 1)[0]
    assert "im_start" not in before_config and "Case: " in before_config.split("## Predictions", 1)[1]
    failures = before_config.split("## Notable failures", 1)[1].split("\n## ", 1)[0]
    assert "Forgetting (forgetting/contains): the tuned model misses " in failures
    assert "Answer in a few words." in failures  # a general question of the forgetting set
    rag = result.metrics["baseline_info"]["rag"]  # the document-RAG column, over the citation rules
    assert "exact_match" in result.metrics["baselines"]["rag"]
    assert rag["documents"] == 1 and rag["chunks"] >= 5 and rag["leaked_answers"] == 0
    assert rag["tie_only_queries"] == 0 and rag["queries"] == 3


def test_rehearsal_records_are_mixed_in_and_counted():
    from tuneforge.errors import DataError
    from tuneforge.plugins.datasets import sample_path
    from tuneforge.plugins.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = lc.LegalCitationsConfig(n_train=12, n_val=3, rehearsal_path=sample_path("rehearsal_general.jsonl"),
                                     n_rehearsal=4, max_length=1024)
    splits = lc.load_legal_citations(config, tokenizer)
    assert splits.stats["train_examples"] == 16
    assert splits.stats["task_examples"] == 12 and splits.stats["rehearsal_examples"] == 4
    rehearsed = [i for i, ex in enumerate(splits.train) if "rehearsal_general.jsonl" in ex["source"]]
    assert len(rehearsed) == 4 and rehearsed != [12, 13, 14, 15]  # spread through, not appended
    assert all("rehearsal" not in ex["source"] for ex in splits.val)
    with pytest.raises(DataError, match="rehearsal_path"):
        lc.load_legal_citations(lc.LegalCitationsConfig(n_train=4, n_val=1, n_rehearsal=2), tokenizer)


def test_rehearsal_and_forgetting_sets_do_not_overlap():
    from tuneforge.plugins.datasets import sample_path

    def questions(name):
        return {json.loads(line)["instruction"] for line in Path(sample_path(name)).read_text().splitlines()}

    assert not questions("rehearsal_general.jsonl") & questions("forgetting_general.jsonl")
