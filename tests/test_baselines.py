"""Prompting baselines: retrieval ranks and builds prompts as it should, demonstrations never come from
the held-out split, the host checks what a baseline returns, a synthetic copy task proves retrieval
retrieves end to end, a third-party baseline is a column, and ``compare`` shows intervals."""

import json
from dataclasses import dataclass

import pytest
import torch

import tuneforge
from tuneforge.errors import PluginError
from tuneforge.evaluation import demonstration_pool, prompts_and_references, record_predictions, record_scores
from tuneforge.evaluation.baselines import check_rewritten
from tuneforge.plugins import baselines as builtin

from helpers import run_cli


def chat(question, answer, source, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "source": source}


LOCKERS = [f"k{i:03d}x" for i in range(40)]
CODES = [f"{(i * 7919) % 9973:04d}-{chr(65 + i % 26)}{chr(90 - i % 26)}" for i in range(40)]


def copy_task(n_train: int = 40, n_val: int = 10):
    """Training: the code of each locker; held out: the same lockers asked another way, whose answer is
    exactly the code of the training example with the same locker (so copying it is right)."""
    train = [{"instruction": f"Which code opens locker {key}?", "output": code}
             for key, code in zip(LOCKERS[:n_train], CODES[:n_train])]
    val = [{"instruction": f"Tell me, please: the locker {LOCKERS[i]} opens with what code?", "output": CODES[i]}
           for i in range(0, n_train, n_train // n_val)][:n_val]
    return train, val


def test_retrieval_ranks_the_training_example_sharing_the_rare_words():
    train, val = copy_task()
    pool = [chat(r["instruction"], r["output"], f"train:{i}") for i, r in enumerate(train)]
    ranked = builtin.rank_similar(pool, [r["instruction"] for r in val], k=3)
    for record, order in zip(val, ranked):
        assert len(order) == 3
        assert pool[order[0]]["messages"][-1]["content"] == record["output"]  # the same locker, first
    assert builtin.rank_similar([], ["anything"], k=2) == [[]]
    assert builtin.words("Locker K007x, please!") == ["locker", "k007x", "please"]


def test_retrieval_prompt_puts_the_most_similar_demonstration_last_before_the_question():
    train = [chat("What is the capital of France?", "Paris", "t:0"), chat("Spell cat backwards.", "tac", "t:1"),
             chat("What is the capital of Italy?", "Rome", "t:2", system="Answer briefly.")]
    held = chat("What is the capital city of Italy?", "Rome", "v:0", system="Be terse.")
    out = builtin.rewrite_retrieval(None, None, train, [held], builtin.RetrievalConfig(k=2))[0]
    assert out["demonstrations"] == ["t:0", "t:2"]  # France second most similar, Italy most similar: last
    assert out["messages"] == [
        {"role": "system", "content": "Be terse."},  # the example's own system message stays first
        {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "What is the capital of Italy?"}, {"role": "assistant", "content": "Rome"},
        {"role": "user", "content": "What is the capital city of Italy?"}, {"role": "assistant", "content": "Rome"}]
    assert check_rewritten("retrieval", [held], [out]) == [out]


def test_demonstrations_never_come_from_the_held_out_split():
    held = [chat("Q held 1", "A1", "v:0"), chat("Q held 2", "A2", "v:1")]
    train = [chat(f"Q train {i}", f"T{i}", f"t:{i}") for i in range(12)]
    train.insert(5, chat("q  HELD 1", "a1", "t:leaked"))  # the same exchange as a held-out one (case, spaces)
    train.append({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
                                "tool_calls": [{"name": "f"}]}], "source": "t:tool"})
    pool = demonstration_pool(train, held)
    assert [ex["source"] for ex in pool] == [f"t:{i}" for i in range(12)]  # no leaked one, no tool call
    held_sources = {ex["source"] for ex in held}
    for seed in range(5):
        for out in builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=12), seed=seed):
            assert len(out["demonstrations"]) == 12 and not set(out["demonstrations"]) & held_sources
            assert "t:leaked" not in out["demonstrations"]
    for out in builtin.rewrite_retrieval(None, None, train, held, builtin.RetrievalConfig(k=13)):
        assert "t:leaked" not in out["demonstrations"] and len(out["demonstrations"]) == 12
    first = builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=3), seed=1)
    again = builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=3), seed=1)
    other = builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=3), seed=2)
    assert first == again and first[0]["demonstrations"] != other[0]["demonstrations"]
    assert first[0]["demonstrations"] == first[1]["demonstrations"]  # the same shots for every prompt


def test_few_shot_shows_every_label_of_a_classification_set_and_no_rehearsal_row():
    labels = ["billing", "shipping", "returns", "technical", "account"]
    train = [chat(f"ticket {i}", labels[i % 5], f"t:{i}") for i in range(40)]
    train += [chat(f"General question {i}?", f"General answer {i}.", f"r:{i}") for i in range(8)]  # rehearsal
    held = [chat("held ticket", "billing", "v:0")]
    for seed in range(10):
        info: dict = {}
        [out] = builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=4), seed=seed, info=info)
        shown = [int(source.split(":")[1]) for source in out["demonstrations"] if source.startswith("t:")]
        assert len(out["demonstrations"]) == len(shown) == 5, "one per label: k=4 grows to the 5 labels"
        assert {labels[i % 5] for i in shown} == set(labels) and info == {"labels": 5, "demonstrations": 5}
    [out] = builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=8), seed=0)
    assert len(out["demonstrations"]) == 8 and all(s.startswith("t:") for s in out["demonstrations"])
    again = builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=8), seed=0)
    assert again == [out]
    # false: the plain random draw (rehearsal rows included); true on open answers: an error
    plain = builtin.rewrite_few_shot(None, None, train, held, builtin.FewShotConfig(k=4, cover_labels=False), seed=0)
    assert len(plain[0]["demonstrations"]) == 4
    open_ended = [chat(f"Q{i}", f"A{i}", f"o:{i}") for i in range(10)]
    assert len(builtin.rewrite_few_shot(None, None, open_ended, held, builtin.FewShotConfig(k=3), seed=0)[0][
        "demonstrations"]) == 3
    with pytest.raises(tuneforge.ConfigError, match="cover_labels=true, but the training answers are not labels"):
        builtin.rewrite_few_shot(None, None, open_ended, held, builtin.FewShotConfig(k=3, cover_labels=True))
    with pytest.raises(tuneforge.ConfigError, match=r"cover_labels: must be one of auto, true, false, got 'yes'"):
        builtin.FewShotConfig(cover_labels="yes")


def test_the_host_refuses_a_baseline_that_leaks_or_changes_the_question():
    held = [chat("Q held 1", "A1", "v:0"), chat("Q held 2", "A2", "v:1")]
    leak = [dict(held[0], messages=[*held[1]["messages"], *held[0]["messages"]]), held[1]]
    with pytest.raises(PluginError, match=r"baseline 'bad' showed held-out example v:1 as a demonstration in "
                                          r"the prompt of v:0"):
        check_rewritten("bad", held, leak)
    changed = [dict(held[0], messages=[{"role": "user", "content": "Q held 1, and be brief"},
                                       held[0]["messages"][1]]), held[1]]
    with pytest.raises(PluginError, match="changed the turns of held-out example v:0"):
        check_rewritten("bad", held, changed)
    with pytest.raises(PluginError, match="returned 1 examples for 2 held-out ones"):
        check_rewritten("bad", held, held[:1])


@dataclass
class DemoCopyConfig:
    """(no settings)"""


class DemoCopy:
    """An evaluator that answers each prompt with the answer of its last demonstration (the turn right
    before the question): it scores 1 exactly when that demonstration's answer is the reference."""

    @tuneforge.hookimpl
    def tuneforge_evaluators(self):
        def evaluate(model, tokenizer, examples, config, *, evaluation=None):
            hits, rows = [], []
            prompts, references = prompts_and_references(tokenizer, examples, evaluation=evaluation)
            for example, prompt, reference in zip(examples, prompts, references):
                messages = example["messages"]
                copied = messages[-3]["content"] if len(messages) >= 3 and messages[-3]["role"] == "assistant" else ""
                hits.append(float(copied == reference))
                rows.append({"source": example["source"], "prompt": prompt, "reference": reference, "output": copied})
            record_scores("copied", hits, evaluation=evaluation)
            record_predictions("val", "copy", tuple(prompts), rows, evaluation=evaluation)
            return {"copied": sum(hits) / len(hits)}

        return [tuneforge.EvaluatorSpec("demo_copy", DemoCopyConfig, evaluate=evaluate, metrics=(
            tuneforge.MetricInfo("copied", primary=True, description="the last demonstration's answer is right"),))]


def test_retrieval_retrieves_on_a_copy_task_end_to_end(tmp_path):
    from tuneforge.testing import run_tiny_fit

    train, val = copy_task()
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    result = run_tiny_fit(tmp_path / "run", plugins=[DemoCopy()], overrides=[
        "data=jsonl", f"data.path={tmp_path / 'train.jsonl'}", f"data.val_path={tmp_path / 'val.jsonl'}",
        "data.cache=false", "evaluators=[demo_copy]", "trainer.max_steps=1", "memorisation.sample=5",
        "callbacks=[targets]",
        '+callbacks.targets.checks={retrieval: "ci_low:retrieval:demo_copy/copied >= 0.5", '
        'tuned: "ci_high:tuned-retrieval:demo_copy/copied < 0"}'])
    metrics = result.metrics
    assert metrics["baselines"]["retrieval"]["demo_copy/copied"] >= 0.9  # the locker's own code was retrieved
    assert metrics["base"]["demo_copy/copied"] == 0.0 and metrics["tuned"]["demo_copy/copied"] == 0.0  # no demonstration
    assert metrics["baselines"]["few_shot"]["demo_copy/copied"] <= 0.2  # 4 random lockers of 40
    assert metrics["intervals"]["retrieval"]["demo_copy/copied"]["n"] == len(val)
    assert metrics["verdict"]["outcome"] == "prompting_suffices" and metrics["verdict"]["baseline"] == "retrieval"
    assert metrics["verdict"]["headline"].startswith("Prompting suffices: retrieval")
    assert json.loads((tmp_path / "run" / "targets.json").read_text())["passed"] is True

    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").open()]
    held = [r for r in rows if r["set"] == "val"]
    held_sources = {r["source"] for r in held}
    assert len(held_sources) == len(val)
    assert sum(r["retrieval"] == r["reference"] for r in held) >= 0.9 * len(val)  # the copied answers
    for row in held:  # the question comes last, after the retrieved demonstrations
        locker = row["prompt"].split("locker ")[1].split()[0]
        assert row["retrieval_prompt"].endswith(row["prompt"]) and len(row["retrieval_prompt"]) > len(row["prompt"])
        assert row["retrieval_prompt"].rsplit("Which code opens locker ", 1)[1].startswith(locker + "?")
    cost = metrics["cost"]
    assert cost["retrieval"]["prompt_tokens_per_query"] > 4 * cost["base"]["prompt_tokens_per_query"]
    assert cost["tuned"]["prompt_tokens_per_query"] == cost["base"]["prompt_tokens_per_query"]
    assert "## Verdict" in (tmp_path / "run" / "report.md").read_text()
    saved = json.loads((tmp_path / "run" / "base_eval.json").read_text())["baselines"]
    for column in ("few_shot", "retrieval"):
        for row in saved[column]["predictions"]:
            assert len(row["demonstrations"]) == 4 and not set(row["demonstrations"]) & held_sources
            assert all("train.jsonl" in source for source in row["demonstrations"])


def test_a_third_party_baseline_is_a_column_and_compare_shows_intervals(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("You answer in one word.\n")
    run_dir = tmp_path / "run"
    done = run_cli(["train", "baselines=[few_shot,system_prompt]", f"baselines.system_prompt.path={prompt}",
                    "evaluators=[perplexity,exact_match]", "evaluators.exact_match.max_new_tokens=2",
                    "trainer.max_steps=2", "trainer.enable_progress_bar=false", "threads=1", "memorisation.sample=4",
                    f"run_dir={run_dir}"], site_dirs=["sysprompt"])
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["baselines"]) == ["few_shot", "system_prompt"]
    assert metrics["baseline_info"]["system_prompt"] == {"name": "system_prompt", "label": "system prompt (prompt.txt)"}
    header = next(line for line in done.stdout.splitlines() if line.startswith("metric"))
    assert header.split("  ")[0] == "metric" and "system prompt (prompt.txt)" in header and "few_shot, k=4" in header
    assert "  95% CI " in done.stdout and "verdict: " in done.stdout
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    held = [r for r in rows if r["set"] == "val"]
    assert held and all(r["system_prompt_prompt"].startswith("<|im_start|>system\nYou answer in one word.<|im_end|>")
                        for r in held)
    report = (run_dir / "report.md").read_text()
    assert "| metric | base (zero-shot) | few_shot, k=4 | system prompt (prompt.txt) | tuned |" in report

    compared = run_cli(["compare", str(run_dir), f"out={tmp_path / 'compared'}"])
    assert compared.returncode == 0, compared.stderr
    interval = metrics["intervals"]["tuned"]["perplexity/loss"]
    cell = f"{metrics['tuned']['perplexity/loss']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"
    assert cell in compared.stdout and cell in (tmp_path / "compared" / "comparison.md").read_text()

    missing = run_cli(["train", "baselines=[system_prompt]", f"baselines.system_prompt.path={tmp_path / 'no.txt'}",
                       f"run_dir={tmp_path / 'bad'}"], site_dirs=["sysprompt"])
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("tuneforge: error: baselines.system_prompt.path: no such file")


# ---------------------------------------------------------------------------
# few_shot with the user's own demonstrations (baselines.few_shot.path)
# ---------------------------------------------------------------------------


def write_records(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


DEMOS = [{"instruction": "Capital of Peru?", "output": "Lima", "system": "ignored as a demonstration"},
         {"messages": [{"role": "user", "content": "Spell dog backwards."}, {"role": "assistant", "content": "god"}]},
         {"prompt": "2 + 2?", "completion": "4"}]


def test_few_shot_path_shows_the_files_demonstrations_in_file_order(tmp_path, caplog):
    from tuneforge.evaluation.baselines import retokenize
    from tuneforge.testing import tiny_tokenizer, toy_examples

    demos = write_records(tmp_path / "demos.jsonl", DEMOS)
    tokenizer = tiny_tokenizer()
    held = toy_examples(tokenizer, [{"instruction": "Capital of Chile?", "output": "Santiago"},
                                    {"instruction": "Spell cat backwards.", "output": "tac"}])
    labels = ["yes", "no"]  # a classification training set: cover_labels does not apply with path
    train = [chat(f"t{i}", labels[i % 2], f"t:{i}") for i in range(20)]
    info: dict = {}
    with caplog.at_level("INFO", logger="tuneforge"):
        out = builtin.rewrite_few_shot(None, tokenizer, train, held, builtin.FewShotConfig(path=str(demos)), info=info)
    assert [o["demonstrations"] for o in out] == [[f"{demos}:1", f"{demos}:2", f"{demos}:3"]] * 2
    assert out[0]["messages"][:6] == [
        {"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima"},
        {"role": "user", "content": "Spell dog backwards."}, {"role": "assistant", "content": "god"},
        {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    assert info == {"path": str(demos), "file_records": 3, "demonstrations": 3, "held_out_questions": 0}
    assert f"all 3 demonstrations of {demos}, in file order" in caplog.text
    assert check_rewritten("few_shot", held, out) == out
    encoded = retokenize(tokenizer, held[0], out[0])  # the host re-tokenizes: loss only on the own answer
    assert tokenizer.decode([t for t in encoded["labels"] if t >= 0]).startswith("Santiago")

    caplog.clear()
    with caplog.at_level("INFO", logger="tuneforge"):
        first = builtin.rewrite_few_shot(None, tokenizer, train, held, builtin.FewShotConfig(k=2, path=str(demos)))
    assert first[0]["demonstrations"] == [f"{demos}:1", f"{demos}:2"]
    assert f"the first 2 of the 3 demonstrations of {demos} (k=2)" in caplog.text
    assert builtin.rewrite_few_shot(None, tokenizer, train, held, builtin.FewShotConfig(k=9, path=str(demos))) == out

    describe = builtin.describe_few_shot
    assert describe(builtin.FewShotConfig(path=str(demos))) == "few_shot, 3 from demos.jsonl"
    assert describe(builtin.FewShotConfig(k=2, path=str(demos))) == "few_shot, 2 from demos.jsonl"
    assert describe(builtin.FewShotConfig()) == "few_shot, k=4" and describe(builtin.FewShotConfig(k=8)) == "few_shot, k=8"
    # after a run, the number shown: one demonstration of each of 5 labels for k=4, or the pool's 3 for k=8
    assert describe(builtin.FewShotConfig(), info={"labels": 5, "demonstrations": 5}) == "few_shot, k=5"
    assert describe(builtin.FewShotConfig(k=8), info={"demonstrations": 3}) == "few_shot, k=3"
    assert describe(builtin.FewShotConfig(path=str(demos)), info={"demonstrations": 3}) == "few_shot, 3 from demos.jsonl"
    info: dict = {}
    builtin.rewrite_few_shot(None, None, [chat(f"Q{i}", f"A{i}", f"o:{i}") for i in range(3)], held,
                             builtin.FewShotConfig(k=8), info=info)
    assert info == {"demonstrations": 3}


def test_few_shot_path_refuses_bad_files_and_held_out_answers(tmp_path, caplog):
    from tuneforge.errors import DataError
    from tuneforge.validation import ConfigValueError

    held = [chat("Capital of Chile?", "Santiago", "val.jsonl:4")]
    with pytest.raises(ConfigValueError, match=r"^path: no such file: .*missing\.jsonl"):
        builtin.FewShotConfig(path=str(tmp_path / "missing.jsonl"))
    demos = write_records(tmp_path / "demos.jsonl", DEMOS)
    with pytest.raises(ConfigValueError, match=r"^cover_labels: true does not apply with baselines\.few_shot\.path"):
        builtin.FewShotConfig(path=str(demos), cover_labels=True)
    assert builtin.FewShotConfig(path=str(demos), cover_labels=False).path == str(demos)

    def refused(records, name="bad.jsonl"):  # with the config, before any model loads
        path = write_records(tmp_path / name, records)
        with pytest.raises(ConfigValueError) as raised:
            builtin.FewShotConfig(path=str(path))
        message = str(raised.value)
        assert "\n" not in message and message.startswith(f"path: {path}")
        return message

    assert "empty.jsonl holds no records" in refused([], "empty.jsonl") and "valid: alpaca" in refused([], "e.jsonl")
    pair = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
    message = refused([DEMOS[0], pair])
    assert f"{tmp_path / 'bad.jsonl'}:2 is a preference pair" in message and "valid: alpaca (instruction, output)" in message
    assert "bad.jsonl:1 is a prompt without an answer" in refused([{"prompt": "Q?"}])
    assert "bad.jsonl:1 is a conversation that does not go from a user turn" in refused(
        [{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "Q?"}]}])

    leaking = write_records(tmp_path / "leak.jsonl", [DEMOS[1], {"instruction": "capital of  CHILE?", "output": "santiago"}])
    with pytest.raises(DataError) as raised:  # when the baseline runs: the held-out split is known then
        builtin.rewrite_few_shot(None, None, [], held, builtin.FewShotConfig(path=str(leaking)))
    leak = str(raised.value)
    assert "\n" not in leak and leak.startswith("baselines.few_shot.path: ")
    assert "leak.jsonl:2 is held-out example val.jsonl:4 (the same question and answer)" in leak
    with caplog.at_level("WARNING", logger="tuneforge"):
        asked = write_records(tmp_path / "asked.jsonl", [{"instruction": "Capital of Chile?", "output": "Lima"}])
        info: dict = {}
        [out] = builtin.rewrite_few_shot(None, None, [], held, builtin.FewShotConfig(path=str(asked)), info=info)
    assert out["demonstrations"] == [f"{asked}:1"] and info["held_out_questions"] == 1
    assert f"first: {asked}:1 asks the question of held-out example val.jsonl:4" in caplog.text


def test_few_shot_path_composes_from_the_command_line_and_is_a_data_file_of_the_run(tmp_path):
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.host.components import run_components, validate
    from tuneforge.training.data_files import declared_data_paths

    plugins = load_plugins([])
    demos = write_records(tmp_path / "demos.jsonl", DEMOS)
    cfg = compose(["baselines=[few_shot]", f"baselines.few_shot.path={demos}"])
    assert validate(cfg, plugins) == []
    components = run_components(cfg, plugins)
    config = components.baselines["few_shot"].config
    assert config.path == str(demos) and config.k is None
    assert str(demos) in declared_data_paths(components)  # hashed with the data files (resume, eval)
    problems = validate(compose(["baselines=[few_shot]", f"baselines.few_shot.path={demos}",
                                 "baselines.few_shot.cover_labels=true"]), plugins)
    assert [p.key for p in problems] == ["baselines.few_shot.cover_labels"]
    missing = validate(compose(["baselines=[few_shot]", f"baselines.few_shot.path={tmp_path / 'no.jsonl'}"]), plugins)
    assert [p.key for p in missing] == ["baselines.few_shot.path"] and "no such file" in str(missing[0])
    pairs = write_records(tmp_path / "pairs.jsonl", [{"prompt": "Q?", "chosen": "good", "rejected": "bad"}])
    bad = validate(compose(["baselines=[few_shot]", f"baselines.few_shot.path={pairs}"]), plugins)
    assert [p.key for p in bad] == ["baselines.few_shot.path"] and "pairs.jsonl:1 is a preference pair" in str(bad[0])


# ---------------------------------------------------------------------------
# majority: the most common training answer, without a model
# ---------------------------------------------------------------------------


def test_majority_answers_the_most_common_training_label_and_nothing_for_open_answers():
    labels = ["billing", "shipping", "returns"]
    train = [chat(f"ticket {i}", labels[min(i % 4, 2)], f"t:{i}") for i in range(40)]  # returns: 20 of 40
    held = [chat("held ticket", "billing", "v:0"), chat("another", "returns", "v:1")]
    info: dict = {}
    assert builtin.answer_majority(train, held, builtin.MajorityConfig(), info=info) == ["returns", "returns"]
    assert info == {"answer": "returns", "share": 0.5, "labels": 3}
    tied = [chat(f"ticket {i}", labels[i % 2], f"t:{i}") for i in range(10)]  # billing 5, shipping 5
    assert builtin.answer_majority(tied, held, builtin.MajorityConfig()) == ["billing", "billing"]
    open_ended = [chat(f"Q{i}", f"A{i}", f"o:{i}") for i in range(10)]
    info = {}
    assert builtin.answer_majority(open_ended, held, builtin.MajorityConfig(), info=info) is None
    assert info["skipped"].startswith("the training answers are not labels")
    with pytest.raises(tuneforge.ConfigError, match="max_labels"):
        builtin.MajorityConfig(max_labels=1)


def test_a_baseline_gives_exactly_one_of_rewrite_and_answer():
    @dataclass
    class Cfg:
        pass

    with pytest.raises(TypeError, match="give exactly one of 'rewrite' .* got neither"):
        tuneforge.BaselineSpec("nothing", Cfg)
    with pytest.raises(TypeError, match="got both"):
        tuneforge.BaselineSpec("both", Cfg, rewrite=lambda *a: [], answer=lambda *a: [])


def test_the_majority_column_scores_its_answer_with_the_answer_scoring_evaluators(tmp_path):
    from tuneforge.testing import run_tiny_fit

    labels = ["billing", "shipping", "returns"]
    records = [{"instruction": f"Route ticket number {i}.", "output": labels[min(i % 4, 2)]} for i in range(48)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:36]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[36:]))
    result = run_tiny_fit(tmp_path / "run", overrides=[
        f"data.path={tmp_path / 'train.jsonl'}", f"data.val_path={tmp_path / 'val.jsonl'}", "data.cache=false",
        "evaluators=[perplexity,exact_match]", "evaluators.exact_match.max_new_tokens=2", "trainer.max_steps=1",
        "baselines=[majority]", "memorisation.sample=0"])
    metrics = result.metrics
    # exact_match scored the constant answer; perplexity scores a model, so it is not in the column
    assert metrics["baselines"]["majority"] == {"exact_match": pytest.approx(6 / 12)}
    assert metrics["baseline_info"]["majority"] == {"no_model": True, "answer": "returns", "share": 0.5,
                                                    "labels": 3, "name": "majority",
                                                    "label": "most common answer (no model)"}
    assert "majority" in metrics["verdict"]["comparisons"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").open()]
    held = [r for r in rows if r["set"] == "val" and r["kind"] == "generation"]
    assert len(held) == 12 and all(r["majority"] == "returns" for r in held)
    assert [r["scores"]["majority"]["exact_match"] for r in held] == [float(r["reference"] == "returns") for r in held]
    assert "most common answer (no model)" in (tmp_path / "run" / "report.md").read_text()

    # open answers (the default sample data): no column, and the reason is recorded
    plain = run_tiny_fit(tmp_path / "plain", overrides=["trainer.max_steps=1", "memorisation.sample=0",
                                                        "baselines=[majority]"]).metrics
    assert "majority" not in plain.get("baselines", {})
    assert plain["baselines_skipped"]["majority"].startswith("the training answers are not labels")


class AnswerPlugin:
    """A baseline that answers without a model (``oracle``: each held-out reference, or what ``MODE`` says)
    and an evaluator that reads the answers and also runs the model (``hybrid``)."""

    MODE = "oracle"

    @tuneforge.hookimpl
    def tuneforge_baselines(self):
        @dataclass
        class OracleConfig:
            """no options"""

        def answer(train, held_out, config):
            references = [ex["messages"][-1]["content"] for ex in held_out]
            return {"oracle": references, "number": [0, *references[1:]], "short": references[:-1],
                    "text": "billing"}[AnswerPlugin.MODE]

        return [tuneforge.BaselineSpec("oracle", OracleConfig, answer=answer)]

    @tuneforge.hookimpl
    def tuneforge_evaluators(self):
        @dataclass
        class HybridConfig:
            """no options"""

        def evaluate(model, tokenizer, examples, config, evaluation=None):
            from tuneforge.evaluation import generate_predictions

            rows = generate_predictions(model, tokenizer, examples, evaluation=evaluation)
            first = model(input_ids=torch.tensor([[1, 2, 3]])).logits[0, 0, 0].item()
            return {"answered": float(len(rows)), "first_logit": first}

        return [tuneforge.EvaluatorSpec("hybrid", HybridConfig, evaluate=evaluate)]


def _answer_column(mode, examples):
    from types import SimpleNamespace

    from tuneforge.evaluation.baselines import answer_column
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins

    AnswerPlugin.MODE = mode
    overrides = ["evaluators=[exact_match,hybrid]", "evaluators.exact_match.max_new_tokens=2", "baselines=[oracle]"]
    plugins = load_plugins(overrides, extra_plugins=[AnswerPlugin()])
    run = run_components(compose(overrides), plugins)
    model, tokenizer = run.model.spec.load(run.model.config)
    splits = SimpleNamespace(train=examples, val=examples, chat_template=None)
    return answer_column("oracle", run.baselines["oracle"], run.evaluators, run.settings, model, tokenizer, splits)


def test_answers_go_to_their_own_examples_and_a_model_running_evaluator_gives_the_column_nothing():
    held = [chat(f"ticket {i}", ["billing", "shipping", "returns"][i % 3], "tickets") for i in range(9)]  # one source
    column, why = _answer_column("oracle", held)
    assert why is None and column["metrics"] == {"exact_match": 1.0}  # hybrid ran the model: none of its metrics
    assert [row["oracle"] for row in column["predictions"]] == [ex["messages"][-1]["content"] for ex in held]
    for mode, problem in (("number", "returned 0 (int) as item 0 of 9"), ("short", "returned list of 8"),
                          ("text", "returned str")):
        with pytest.raises(PluginError) as refused:
            _answer_column(mode, held)
        line = str(refused.value)
        assert line.startswith("plugin ") and f"baseline 'oracle', answer {problem}; it must return a list of 9 " \
            "strings (one answer per held-out example, in order), or None" in line


def test_prediction_rows_sharing_a_source_each_get_their_own_baseline_output():
    from tuneforge.evaluation.baselines import join_columns

    rows = [{"set": "val", "kind": "generation", "source": "tickets", "prompt": f"p{i}", "base": f"b{i}"}
            for i in range(3)]
    column = {"predictions": [{"set": "val", "kind": "generation", "source": "tickets", "prompt": f"q{i}",
                               "few_shot": f"f{i}", "scores": {"few_shot": {"exact_match": float(i == 1)}}}
                              for i in range(3)]}
    joined = join_columns(rows, {"few_shot": column})
    assert [r["few_shot"] for r in joined] == ["f0", "f1", "f2"]
    assert [r["few_shot_prompt"] for r in joined] == ["q0", "q1", "q2"]
    assert [r["scores"]["few_shot"]["exact_match"] for r in joined] == [0.0, 1.0, 0.0]
