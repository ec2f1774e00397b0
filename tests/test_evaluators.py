"""Evaluators: known predictions -> known scores, and the full evaluators on the tiny model."""

import json
import math

import pytest
import torch

from tuneforge.data import Record, tokenize_records
from tuneforge.errors import ConfigError, DataError
from tuneforge.evaluation import (
    EvaluationPass,
    few_shot_messages,
    generate,
    generate_predictions,
    prompts_and_references,
    with_few_shot,
)
from tuneforge.plugins.evaluators import ChoiceConfig, PerplexityConfig, evaluate_choice, evaluate_perplexity
from tuneforge.plugins.evaluators import score_continuations
from tuneforge.plugins.evaluators_forgetting import ForgettingConfig, evaluate_forgetting
from tuneforge.plugins.evaluators_generation import (
    NormalizedEvalConfig,
    RegexEvalConfig,
    RougeEvalConfig,
    evaluate_exact_match,
    evaluate_regex,
    evaluate_rouge,
    score_bleu,
    score_chrf,
    score_contains,
    score_exact_match,
    score_regex,
    score_rouge,
)
from tuneforge.plugins.models import TinyModelConfig, load_tiny
from tuneforge.testing import run_tiny_fit


# ---------------------------------------------------------------------------
# Scoring functions: known predictions -> known scores
# ---------------------------------------------------------------------------


def test_exact_match_normalisation():
    predictions = ["Paris", " paris ", "New   York", "Rome"]
    references = ["Paris", "Paris", "new york", "Paris"]
    assert score_exact_match(predictions, references) == {"exact_match": 0.25}
    assert score_exact_match(predictions, references, lowercase=True) == {"exact_match": 0.5}
    assert score_exact_match(predictions, references, lowercase=True, collapse_whitespace=True) == {
        "exact_match": 0.75}
    assert score_exact_match([" Paris"], ["Paris"], strip=False) == {"exact_match": 0.0}


def test_contains_and_regex():
    assert score_contains(["The answer is Paris.", "London", "PARIS!"], ["Paris"] * 3) == {
        "contains": pytest.approx(1 / 3)}
    assert score_contains(["PARIS!"], ["Paris"], lowercase=True) == {"contains": 1.0}
    citation = r"[A-Z]\w+ v\. [A-Z]\w+, \d+ F\.3d \d+ \(\d+\w* Cir\. \d{4}\)"
    predictions = ["Smith v. Jones, 123 F.3d 456 (9th Cir. 1999)", "See Smith v. Jones, 123 F.3d 456 (9th Cir. 1999).",
                   "Smith vs Jones 1999"]
    assert score_regex(predictions, [citation] * 3) == {"regex": pytest.approx(2 / 3)}
    assert score_regex(predictions, [citation] * 3, fullmatch=True) == {"regex": pytest.approx(1 / 3)}
    assert score_regex(["ABC"], ["abc"], ignore_case=True) == {"regex": 1.0}
    with pytest.raises(ConfigError, match="invalid pattern"):
        score_regex(["x"], ["("])


def test_rouge_bleu_chrf_known_values():
    # ROUGE-L: LCS 3 of 3 predicted and 6 reference words -> P=1, R=0.5, F=2/3
    assert score_rouge(["the cat sat"], ["the cat sat on the mat"])["rougeL"] == pytest.approx(2 / 3)
    assert score_rouge(["a b c", "x y"], ["a b c", "p q"])["rougeL"] == pytest.approx(0.5)
    assert score_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(100.0)
    assert score_bleu(["dog"], ["the cat sat on the mat"])["bleu"] == pytest.approx(0.0)
    partial = score_bleu(["the cat sat on a mat"], ["the cat sat on the mat"])["bleu"]
    assert 0 < partial < 100
    assert score_chrf(["Smith v. Jones"], ["Smith v. Jones"])["chrf"] == pytest.approx(100.0)
    assert score_chrf(["qqqq"], ["abcd"])["chrf"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score_rouge(["a", "b"], ["a"])


def test_rouge_scores_chinese_by_characters_and_warns_when_text_is_discarded(caplog):
    from rouge_score import rouge_scorer

    from tuneforge.plugins import evaluators_generation as generation

    # rouge-score's own tokenizer keeps no Chinese character: every Chinese pair scores 0
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score("中国的首都是北京", "北京是中国的首都")["rougeL"].fmeasure == 0.0
    # by characters: LCS of 中国的首都 (5) in 8 and 8 characters -> F = 5/8
    assert score_rouge(["北京是中国的首都"], ["中国的首都是北京"])["rougeL"] == pytest.approx(5 / 8)
    # mixed text: the Latin words are rouge-score's tokens, each Han character one more
    assert generation.RougeTokenizer().tokenize("Hello, 北京 World 2024年") == ["hello", "北", "京", "world", "2024",
                                                                             "年"]
    assert score_rouge(["the cat sat"], ["the cat sat on the mat"])["rougeL"] == pytest.approx(
        default.score("the cat sat on the mat", "the cat sat")["rougeL"].fmeasure)  # English as before
    generation._WARNED.clear()
    caplog.clear()  # the plain scorer above logs "Using default tokenizer." when absl is already at INFO
    with caplog.at_level("INFO"):
        references = ["Москва столица России", "Paris is the capital", "Берлин"]
        for _ in range(3):  # base, baselines, tuned: the same references warn once
            score_rouge(["Москва", "Paris", "Berlin"], references)
        assert score_rouge(["a"], ["the cat"])["rougeL"] == 0.0  # English: no warning
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rouge:")]
    assert warnings == ["rouge: its tokenizer keeps only ASCII letters, digits and CJK characters; it discards "
                        "100% of the letters of 2 of 3 references (Cyrillic text), so ROUGE-L says little about "
                        "them: compare with chrf (characters) instead"]
    assert generation.dropped_characters("Café au lait") == (1, 10)
    assert generation.warn_dropped_text(["北京", "Café"]) is None  # CJK is kept, and 1 of 4 letters is not most
    # rouge-score logs "Using default tokenizer." (absl, INFO) for every scorer built without a tokenizer
    assert not [r for r in caplog.records if "default tokenizer" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("INFO"):
        rouge_scorer.RougeScorer(["rougeL"])
    assert [r.getMessage() for r in caplog.records if "default tokenizer" in r.getMessage()] == [
        "Using default tokenizer."]


def test_partial_characters_are_trimmed_at_the_cut_off(tiny):
    from tuneforge.evaluation import decode_outputs

    _, tokenizer = tiny  # byte-level: "é" is two tokens, one per UTF-8 byte
    ids = tokenizer("café", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and tokenizer.decode(ids[:-1]) == "caf\ufffd"
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stops = {eos, pad}
    middle = tokenizer("a", add_special_tokens=False)["input_ids"] + ids[3:4] + ids[:1]  # a broken byte inside
    assert decode_outputs(tokenizer, [ids[:-1], ids, middle], stops) == ["caf", "café", "a\ufffdc"]
    # a sequence that stopped by itself (end of turn, then padding) keeps what the model wrote
    assert decode_outputs(tokenizer, [ids[:-1] + [eos, pad]], stops) == ["caf\ufffd"]
    # generate() on the tiny random model: raw byte outputs cut mid-character lose the partial character
    model, _ = tiny
    prompts = [f"<|im_start|>user\nquestion {i}<|im_end|>\n<|im_start|>assistant\n" for i in range(12)]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=12)
    assert not any(text.endswith("\ufffd") for text in outputs)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        raw = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=pad, eos_token_id=[eos])
    decoded = tokenizer.batch_decode(raw[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    cut = [i for i, text in enumerate(decoded) if text.strip().endswith("\ufffd")]
    assert cut  # the random model does write partial characters at the cut-off
    for i in cut:
        assert outputs[i] == decoded[i].strip().rstrip("\ufffd").rstrip()


# ---------------------------------------------------------------------------
# Prompts, generation and sharing on the tiny model
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_tiny(TinyModelConfig())
    model.eval()
    return model, tokenizer


def _examples(tokenizer, rows):
    records = [Record(row, f"fixture:{i + 1}") for i, row in enumerate(rows)]
    return tokenize_records(records, tokenizer)[0]


QA = [
    {"instruction": "Capital of France?", "output": "Paris"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"instruction": "Spell 'stone' backwards, please, one letter at a time.", "output": "enots"},
]


def test_prompt_is_messages_minus_final_turn_with_few_shot(tiny):
    _, tokenizer = tiny
    examples = _examples(tokenizer, QA)
    prompts, references = prompts_and_references(tokenizer, examples, few_shot=[{"user": "1+1?", "assistant": "2"}])
    assert references == ["Paris", "4", "enots"]
    assert prompts[1] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
                          "<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                          "<|im_start|>assistant\n")
    assert prompts[0].startswith("<|im_start|>user\n1+1?") and prompts[0].endswith("<|im_start|>assistant\n")
    assert with_few_shot([{"role": "user", "content": "q"}], few_shot_messages([]))[0]["content"] == "q"
    with pytest.raises(ConfigError, match="few_shot\\[0\\]"):
        few_shot_messages([{"question": "x"}])


def test_batched_left_padded_generation_equals_one_by_one(tiny):
    model, tokenizer = tiny
    prompts, _ = prompts_and_references(tokenizer, _examples(tokenizer, QA))
    assert len({len(p) for p in prompts}) == 3  # different lengths: padding matters
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored


def test_generation_is_shared_within_a_pass(tiny):
    model, tokenizer = tiny
    examples = _examples(tokenizer, QA)
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        config = NormalizedEvalConfig(max_new_tokens=4)
        one_pass = EvaluationPass("base")
        evaluate_exact_match(model, tokenizer, examples, config, evaluation=one_pass)
        after_first = len(calls)
        evaluate_rouge(model, tokenizer, examples, RougeEvalConfig(max_new_tokens=4), evaluation=one_pass)
        assert len(calls) == after_first > 0  # the second metric generated nothing
        assert len(one_pass.predictions) == 1
        evaluate_rouge(model, tokenizer, examples, RougeEvalConfig(max_new_tokens=4))  # without the pass: generates again
        assert len(calls) > after_first
        assert len(one_pass.predictions) == 1  # and keeps nothing
    finally:
        handle.remove()


def test_exact_match_of_the_models_own_answers_is_one(tiny):
    model, tokenizer = tiny
    examples = _examples(tokenizer, QA)
    rows = generate_predictions(model, tokenizer, examples, max_new_tokens=5)
    assert [r["reference"] for r in rows] == ["Paris", "4", "enots"]
    own = [dict(qa) for qa in QA]
    for row, record in zip(rows, own):
        answer = row["output"] or "x"
        if "messages" in record:
            record["messages"] = record["messages"][:-1] + [{"role": "assistant", "content": answer}]
        else:
            record["output"] = answer
    own_examples = _examples(tokenizer, own)
    config = NormalizedEvalConfig(max_new_tokens=5)
    expected = sum(bool(r["output"]) for r in rows) / len(rows)
    assert evaluate_exact_match(model, tokenizer, own_examples, config)["exact_match"] == pytest.approx(expected)
    assert evaluate_exact_match(model, tokenizer, examples, config)["exact_match"] == score_exact_match(
        [r["output"] for r in rows], ["Paris", "4", "enots"])["exact_match"]


def test_regex_pattern_from_records(tiny):
    model, tokenizer = tiny
    rows = [dict(QA[0], pattern=".*"), dict(QA[2], pattern="^IMPOSSIBLE$")]
    examples = _examples(tokenizer, rows)
    assert evaluate_regex(model, tokenizer, examples, RegexEvalConfig(max_new_tokens=3)) == {"regex": 0.5}
    with pytest.raises(DataError, match="fixture:1: regex evaluator needs a pattern"):
        evaluate_regex(model, tokenizer, _examples(tokenizer, QA[:1]), RegexEvalConfig(max_new_tokens=3))


# ---------------------------------------------------------------------------
# choice
# ---------------------------------------------------------------------------


def _manual_log_likelihood(model, tokenizer, prompt, option):
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(log_probs[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(option_ids))


def _full_logits_loss(model, tokenizer, example) -> tuple:
    """One example's summed target NLL and target count from the model's full logits, unbatched."""
    ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    targets = [(t - 1, int(label)) for t, label in enumerate(labels) if t > 0 and label != -100]
    return -sum(float(log_probs[t, label]) for t, label in targets), len(targets)


@pytest.mark.parametrize("adapter", [None, "prefix"])
def test_perplexity_from_the_target_positions_equals_the_full_logits(tiny, adapter):
    """The output layer runs on the target positions alone; padded batches and an adapter's virtual
    tokens give the same loss as the full logits of each example alone."""
    model, tokenizer = tiny
    if adapter == "prefix":
        from peft import PrefixTuningConfig, get_peft_model

        model = get_peft_model(load_tiny(TinyModelConfig())[0], PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                                  num_virtual_tokens=4)).eval()
    examples = _examples(tokenizer, QA)
    assert len({len(e["input_ids"]) for e in examples}) > 1  # the batch is padded
    one_pass = EvaluationPass("base")
    result = evaluate_perplexity(model, tokenizer, examples, PerplexityConfig(batch_size=3), evaluation=one_pass)
    expected = [_full_logits_loss(model, tokenizer, e) for e in examples]
    assert result["loss"] == pytest.approx(sum(v for v, _ in expected) / sum(n for _, n in expected), rel=1e-5)
    assert one_pass.scores["loss"]["values"] == pytest.approx([v / n for v, n in expected], rel=1e-5)
    assert one_pass.scores["loss"]["weights"] == [n for _, n in expected]


def test_choice_scores_by_option_log_likelihood(tiny):
    model, tokenizer = tiny
    rows = [{"instruction": "Is the sky blue?", "output": "yes", "choices": ["yes", "no", "maybe not"]},
            {"instruction": "Pick a colour.", "output": "red", "choices": ["red", "green"], "answer": 1}]
    examples = _examples(tokenizer, rows)
    prompts, _ = prompts_and_references(tokenizer, examples)
    scores = score_continuations(model, tokenizer, [(prompts[0], o) for o in rows[0]["choices"]])
    for (value, count), option in zip(scores, rows[0]["choices"]):
        assert value == pytest.approx(_manual_log_likelihood(model, tokenizer, prompts[0], option), abs=1e-4)
        assert count == len(tokenizer(option, add_special_tokens=False)["input_ids"])
    # the answer of each record is the option the model prefers -> accuracy 1; another option -> 0
    best = []
    for prompt, row in zip(prompts, rows):
        values = [_manual_log_likelihood(model, tokenizer, prompt, o) for o in row["choices"]]
        best.append(max(range(len(values)), key=values.__getitem__))
    right = [dict(row, answer=b) for row, b in zip(rows, best)]
    wrong = [dict(row, answer=row["choices"][(b + 1) % len(row["choices"])]) for row, b in zip(rows, best)]
    one_pass = EvaluationPass("base")
    assert evaluate_choice(model, tokenizer, _examples(tokenizer, right), ChoiceConfig(),
                           evaluation=one_pass) == {"accuracy": 1.0}
    (rows_kept,) = one_pass.predictions.values()
    assert [r["output"] for r in rows_kept] == [row["choices"][b] for row, b in zip(rows, best)]
    assert evaluate_choice(model, tokenizer, _examples(tokenizer, wrong), ChoiceConfig()) == {"accuracy": 0.0}
    with pytest.raises(DataError, match="fixture:1: answer 'purple' is not one of the options"):
        evaluate_choice(model, tokenizer, _examples(tokenizer, [dict(rows[0], answer="purple")]), ChoiceConfig())


# ---------------------------------------------------------------------------
# forgetting
# ---------------------------------------------------------------------------


def test_forgetting_scores_its_own_reference_set(tiny, tmp_path):
    model, tokenizer = tiny
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps(r) + "\n" for r in QA))
    config = ForgettingConfig(path=str(general), metrics=["exact_match", "perplexity", "rouge"], max_new_tokens=4)
    one_pass = EvaluationPass("base")
    result = evaluate_forgetting(model, tokenizer, [], config, evaluation=one_pass)
    assert set(result) == {"exact_match", "loss", "perplexity", "rougeL"}
    reference = _examples(tokenizer, QA)
    assert result["loss"] == pytest.approx(evaluate_perplexity(model, tokenizer, reference, PerplexityConfig())["loss"])
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    ((set_name, kind, _key),) = one_pass.predictions
    assert (set_name, kind) == ("forgetting", "generation")
    rows = generate_predictions(model, tokenizer, reference, max_new_tokens=4)
    assert result["exact_match"] == score_exact_match([r["output"] for r in rows], ["Paris", "4", "enots"])[
        "exact_match"]
    with pytest.raises(ConfigError, match="evaluators.forgetting.path is not set"):
        evaluate_forgetting(model, tokenizer, [], ForgettingConfig())
    with pytest.raises(ConfigError, match="unknown \\['accuracy'\\]"):
        evaluate_forgetting(model, tokenizer, [], ForgettingConfig(path=str(general), metrics=["accuracy"]))


# ---------------------------------------------------------------------------
# In a run: every evaluator base and tuned, early stopping, `tuneforge eval`
# ---------------------------------------------------------------------------


def test_early_stopping_callback_stops_training(tmp_path):
    result = run_tiny_fit(tmp_path, overrides=[
        "trainer.max_steps=20", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
        "callbacks=[early_stopping]", "callbacks.early_stopping.stopping_threshold=1e9"])
    assert result.metrics["steps"] == 2  # the first validation (after step 2) met the threshold


def test_eval_command_reproduces_the_runs_metrics(tmp_path, capsys):
    from tuneforge.commands.eval import eval_command

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps(r) + "\n" for r in QA))
    run = run_tiny_fit(tmp_path / "run", overrides=[
        "optim.lr=0.01", "evaluators=[perplexity,exact_match,forgetting]",
        "evaluators.exact_match.max_new_tokens=4", f"evaluators.forgetting.path={general}",
        "evaluators.forgetting.metrics=[perplexity]"])
    metrics = run.metrics
    assert set(metrics["base"]) == {"perplexity/perplexity", "perplexity/loss", "exact_match",
                                    "forgetting/loss", "forgetting/perplexity"}
    assert metrics["base"]["perplexity/loss"] != metrics["tuned"]["perplexity/loss"]
    eval_command([f"run_dir={run.run_dir}", "threads=1"])
    printed = capsys.readouterr().out
    assert "perplexity/loss" in printed and "report:" in printed
    again = json.loads((run.run_dir / "eval" / "metrics.json").read_text())
    for label in ("base", "tuned"):
        for name, value in metrics[label].items():
            assert again[label][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (label, name)
    predictions = [json.loads(line) for line in (run.run_dir / "eval" / "predictions.jsonl").open()]
    assert predictions and all({"base", "tuned", "prompt", "reference"} <= set(row) for row in predictions)
    # the prompting baselines run again, so the verdict weighs tuning against them as the run's did
    assert set(metrics["baselines"]) == set(again["baselines"]) == {"few_shot", "retrieval"}
    for key, values in metrics["baselines"].items():
        for name, value in values.items():
            assert again["baselines"][key][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (key, name)
    assert again["verdict"]["decision"] == metrics["verdict"]["decision"]
    assert again["verdict"]["baseline"] == metrics["verdict"]["baseline"]
    held_out = [row for row in predictions if row.get("set") == "val"]
    assert held_out and all({"few_shot", "retrieval"} <= set(row) for row in held_out)

    # overriding the evaluators of a run, and a bare base model with no run
    eval_command([f"run_dir={run.run_dir}", "evaluators=[contains]", "evaluators.contains.max_new_tokens=2",
                  f"out={tmp_path / 'other'}"])
    other = json.loads((tmp_path / "other" / "metrics.json").read_text())
    assert set(other["base"]) == set(other["tuned"]) == {"contains"}
    assert again["setup"]["run_dir"] == str(run.run_dir) and again["setup"]["steps"] == metrics["steps"]
    capsys.readouterr()
    with pytest.raises(ConfigError, match=r"^baselines: the prompting baselines run in tuneforge eval only with "
                                          r"run_dir=<a run>"):
        eval_command(["model=tiny", "baselines=[few_shot]"])
    with pytest.raises(ConfigError, match=r"^baselines: the prompting baselines run"):
        eval_command(["model=tiny", "baselines.few_shot.k=8"])
    from tuneforge.commands.eval import _selects_baselines

    assert not any(_selects_baselines(o) for o in ("baselines=[]", "~baselines", "baselines=null", "optim.lr=1"))
    eval_command(["model=tiny", "evaluators=[perplexity]", f"out={tmp_path / 'bare'}"])
    bare = json.loads((tmp_path / "bare" / "metrics.json").read_text())
    assert "tuned" not in bare
    # nothing to compare: said where the verdict would be, printed and in the report
    printed = capsys.readouterr().out
    assert "verdict: Nothing to compare: only the base model was evaluated" in printed
    assert "No verdict" not in printed
    report = [line for line in (tmp_path / "bare" / "report.md").read_text().splitlines() if line.strip()]
    assert report[0].startswith("# tuneforge evaluation report: tiny on jsonl (")
    assert report[1] == "## Verdict" and report[2].startswith("**Nothing to compare: only the base model")
    assert report[3].startswith("Evaluated tiny on jsonl: ") and "held-out" in report[3]
    assert bare["base"]["perplexity/loss"] == pytest.approx(metrics["base"]["perplexity/loss"], rel=1e-5)


def test_eval_leaves_out_settings_an_older_release_saved(tmp_path, caplog):
    """A run trained by an older tuneforge may have a setting in its config.yaml that this one dropped:
    eval leaves it out with a log line (a key typed on the command line is still refused)."""
    from omegaconf import OmegaConf

    from tuneforge.commands.eval import run_config

    run = run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=1"])
    saved = OmegaConf.load(run.run_dir / "config.yaml")
    saved.trainer.retired_setting = 3
    saved.retired_root = "x"
    (run.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with caplog.at_level("WARNING", logger="tuneforge"):
        final = run_config(run.run_dir, [], force=True)
    assert "retired_setting" not in final.trainer and "retired_root" not in final
    assert "trainer.retired_setting in the run's config.yaml is not a setting of this tuneforge" in caplog.text


def test_eval_that_selects_a_runs_evaluator_again_keeps_its_saved_settings(tmp_path):
    """``evaluators=[exact_match,forgetting]`` on a run that had ``forgetting`` with its own reference set
    keeps that set (the user changed the list, not the evaluator); a newly added evaluator gets its
    defaults, a ``key=value`` override still wins, and a model source selected again keeps its settings."""
    from tuneforge.commands.eval import run_config

    reference = tmp_path / "general.jsonl"
    reference.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": w}) + "\n"
                                 for w in ("yes", "no", "maybe")))
    run = run_tiny_fit(tmp_path / "run", overrides=[
        "trainer.max_steps=1", "evaluators=[perplexity,forgetting]", f"evaluators.forgetting.path={reference}",
        "evaluators.forgetting.metrics=[contains]", "evaluators.forgetting.limit=2", "model.hidden_size=48"])
    final = run_config(run.run_dir, ["evaluators=[exact_match,forgetting]"])
    assert list(final.evaluators) == ["exact_match", "forgetting"]
    forgetting = final.evaluators.forgetting
    assert (forgetting.path, list(forgetting.metrics), forgetting.limit) == (str(reference), ["contains"], 2)
    assert final.evaluators.exact_match.max_new_tokens == run_config(
        run.run_dir, ["evaluators=[exact_match]"]).evaluators.exact_match.max_new_tokens
    assert run_config(run.run_dir, ["evaluators=[forgetting]", "evaluators.forgetting.limit=1"]
                      ).evaluators.forgetting.limit == 1
    assert run_config(run.run_dir, ["model=tiny"]).model.hidden_size == 48
    # evidence.metric naming no selected evaluator: refused before any model loads, as train does
    import tuneforge
    from tuneforge.commands.eval import evaluate
    from tuneforge.host.compose import load_plugins

    with pytest.raises(tuneforge.ConfigError, match=r"^evidence.metric: 'bleu' is not a metric of a selected "
                                                     r"evaluator \(selected: perplexity, forgetting\)"):
        evaluate(run_config(run.run_dir, ["evidence.metric=bleu"]), load_plugins([]), run_dir=run.run_dir)


def test_eval_takes_the_run_directory_as_compare_does(tmp_path):
    """``tuneforge eval runs/x`` (the run directory alone, as ``compare`` and ``status`` take it) evaluates the
    run; before, Hydra refused the path as an override it could not parse."""
    from helpers import run_cli

    run = run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=1"])
    done = run_cli(["eval", str(run.run_dir), "threads=1", "baselines=[]", f"out={tmp_path / 'eval'}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["tuned"]
