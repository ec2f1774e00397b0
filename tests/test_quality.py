"""The data quality report: each problem counted, serious ones stop the run before training."""

import json

import pytest
from tuneforge.data import quality
from tuneforge.host.schema import QualityConfig
from tuneforge.errors import DataError
from tuneforge.host.compose import compose, load_plugins
from tuneforge.plugins.models import build_tiny_tokenizer
from tuneforge.testing import run_tiny_fit

from helpers import run_cli


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _qa(question, answer):
    return {"instruction": question, "output": answer}


TRAIN = [
    _qa("Capital of France?", "Paris"),
    _qa("Capital of France?", "Paris"),                      # exact duplicate of row 1
    _qa("Capital of Italy?", "Rome"),
    _qa("Capital of Spain?", "   "),                         # whitespace-only target
    _qa("Write a long answer.", "word " * 60),               # over data.max_length=64 -> truncated
    _qa("Capital of Peru?", "Lima"),
]
VAL = [
    _qa("capital   of FRANCE?", "paris"),                    # leaks (same text after normalising)
    _qa("Capital of Chile?", "Santiago"),
]


@pytest.fixture
def fixture_files(tmp_path):
    return _write(tmp_path / "train.jsonl", TRAIN), _write(tmp_path / "val.jsonl", VAL)


def _splits(train, val, **data):
    """The jsonl dataset plugin's splits of these files, tokenized with the tiny tokenizer."""
    plugins = load_plugins()
    settings = dict(dict(path=train, val_path=val, max_length=64), **data)
    cfg = compose([f"data.{key}={value}" for key, value in settings.items()], plugins)
    return plugins["data"].get("jsonl").load(cfg.data, build_tiny_tokenizer())


def test_each_problem_is_counted(fixture_files):
    report = quality.assess(_splits(*fixture_files))
    assert report["records"] == {"train": 6, "val": 2}
    assert report["examples"] == {"train": 6, "val": 2}
    assert report["duplicates"] == 1 and report["val_duplicates"] == 0
    assert report["empty_targets"] == {"train": 1, "val": 0}
    assert (report["truncated"], report["dropped"]) == (1, 0)
    assert report["leakage"] == 1 and report["leakage_sources"] == [f"{fixture_files[1]}:1"]
    tokens = report["tokens"]["train"]
    assert tokens["max"] == 64 and tokens["min"] < tokens["median"] < tokens["max"]
    assert report["labels"] is None  # six rows, five distinct targets: not classification-like
    train = fixture_files[0]
    assert report["duplicate_sources"] == [f"{train}:2 = {train}:1"]
    assert report["empty_target_sources"] == [f"{train}:4"]
    assert f"1 training example repeats an earlier one (e.g. {train}:2 = {train}:1)" in report["warnings"]
    assert f"1 training example has an empty target (e.g. {train}:4)" in report["warnings"]

    dropped = quality.assess(_splits(*fixture_files, truncation="drop"))
    assert (dropped["truncated"], dropped["dropped"], dropped["examples"]["train"]) == (0, 1, 5)


def test_serious_problems_stop_unless_allowed(fixture_files):
    report = quality.assess(_splits(*fixture_files))
    with pytest.raises(DataError) as caught:
        quality.check(report, QualityConfig())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("data quality: 1 of 2 held-out examples also occur in the training data (leakage")
    assert "quality.allow_leakage=true" in message
    quality.check(report, QualityConfig(allow_leakage=True))
    with pytest.raises(DataError, match="only 6 training examples, fewer than quality.min_train_examples=10"):
        quality.check(report, QualityConfig(allow_leakage=True, min_train_examples=10))


def test_all_empty_targets_and_label_balance(tmp_path):
    empty = _splits(_write(tmp_path / "e.jsonl", [_qa(f"q{i}", " ") for i in range(5)]),
                    _write(tmp_path / "ev.jsonl", [_qa("other", "x")]))
    report = quality.assess(empty)
    assert report["empty_targets"]["train"] == 5
    with pytest.raises(DataError, match="every training target is empty"):
        quality.check(report, QualityConfig())
    quality.check(report, QualityConfig(allow_empty_targets=True))

    labels = ["positive"] * 8 + ["negative"] * 2
    rows = [_qa(f"Review {i}: sentiment?", label) for i, label in enumerate(labels)]
    balanced = quality.assess(_splits(_write(tmp_path / "c.jsonl", rows), _write(tmp_path / "cv.jsonl",
                                                                                [_qa("Review x", "positive")])))
    assert balanced["labels"] == {"positive": 8, "negative": 2}
    assert any("imbalanced" in w for w in balanced["warnings"])
    assert quality.assess(_splits(_write(tmp_path / "c2.jsonl", rows), tmp_path / "cv.jsonl"),
                          max_labels=1)["labels"] is None
    # rehearsal rows (each answer once) mixed into a classification set: the labels still count
    rehearsal = [_qa(f"General question {i}?", f"answer number {i}") for i in range(4)]
    mixed = quality.assess(_splits(_write(tmp_path / "m.jsonl", rows + rehearsal), tmp_path / "cv.jsonl"))
    assert mixed["labels"] == {"positive": 8, "negative": 2} and mixed["label_others"] == 4
    # mostly open-ended answers: not classification
    open_ended = [_qa(f"Q{i}?", f"free answer {i}") for i in range(10)]
    assert quality.assess(_splits(_write(tmp_path / "o.jsonl", rows + open_ended), tmp_path / "cv.jsonl"))[
        "labels"] is None


def test_leakage_stops_the_run_before_training(fixture_files, tmp_path):
    train, val = fixture_files
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match="leakage"):
        run_tiny_fit(run_dir, overrides=[f"data.path={train}", f"data.val_path={val}"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not (run_dir / "metrics.csv").exists()  # no training step ran
    result = run_tiny_fit(tmp_path / "allowed", overrides=[
        f"data.path={train}", f"data.val_path={val}", "data.max_length=64", "quality.allow_leakage=true",
        "trainer.max_steps=1"])
    assert result.metrics["quality"]["leakage"] == 1 and result.metrics["steps"] == 1


def test_cli_prints_one_line_error(fixture_files, tmp_path):
    train, val = fixture_files
    proc = run_cli(["train", "model=tiny", f"data.path={train}", f"data.val_path={val}", "trainer.max_steps=1",
                    "trainer.accelerator=cpu", f"run_dir={tmp_path / 'cli'}", "threads=1"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert len(errors) == 1 and "leakage" in errors[0] and "quality.allow_leakage=true" in errors[0]


def _pair(i, chosen, rejected):
    return {"prompt": f"Question {i}?", "chosen": chosen, "rejected": rejected}


@pytest.mark.fault(fault="some preference pairs with identical chosen and rejected",
                   outcome="more than `quality.identical_pair_share` of them: one warning naming the count and an "
                           "example `file:line`")
def test_identical_preference_pairs_warn_over_the_share_and_stop_when_all_are(tmp_path):
    val = _write(tmp_path / "pv.jsonl", [_pair(99, "yes", "no")])
    some = [_pair(i, "same", "same") if i < 3 else _pair(i, f"good {i}", f"bad {i}") for i in range(10)]
    report = quality.assess(_splits(_write(tmp_path / "some.jsonl", some), val))
    assert (report["preference_pairs"], report["identical_pairs"]) == (10, 3)
    assert sorted(s.rsplit(":", 1)[1] for s in report["identical_pair_sources"]) == ["1", "2", "3"]
    warning = [w for w in report["warnings"] if "same chosen and rejected" in w]
    assert len(warning) == 1 and warning[0].startswith("3 of 10 preference pairs") and "some.jsonl:" in warning[0]
    quality.check(report, QualityConfig())  # a warning only
    quiet = quality.assess(_splits(_write(tmp_path / "some2.jsonl", some), val), identical_pair_share=0.5)
    assert not [w for w in quiet["warnings"] if "same chosen and rejected" in w]

    every = quality.assess(_splits(_write(tmp_path / "all.jsonl", [_pair(i, "x", "x") for i in range(6)]), val))
    assert every["identical_pairs"] == every["preference_pairs"] == 6
    with pytest.raises(DataError, match=r"all 6 preference pairs have the same chosen and rejected response "
                                        r"\(e\.g\. .*all\.jsonl:\d+\)") as info:
        quality.check(every, QualityConfig())
    assert "\n" not in str(info.value)
    assert "identical_pairs" not in quality.assess(_splits(*_default_files(tmp_path)))


def _default_files(tmp_path):
    return (_write(tmp_path / "n.jsonl", [_qa(f"q{i}", f"a{i}") for i in range(5)]),
            _write(tmp_path / "nv.jsonl", [_qa("other", "x")]))


@pytest.mark.fault(fault="`loss=dpo` on pairs whose chosen and rejected are all identical",
                   outcome="one line `data quality: all N preference pairs have the same chosen and rejected response"
                           " (e.g. file:line) ...` before training")
def test_dpo_on_identical_pairs_stops_before_training(tmp_path):
    rows = [_pair(i, f"answer {i}", f"answer {i}") for i in range(8)]
    with pytest.raises(DataError, match="all 7 preference pairs have the same chosen and rejected"):
        run_tiny_fit(tmp_path / "run", overrides=[f"data.path={_write(tmp_path / 'p.jsonl', rows)}", "loss=dpo",
                                                  "data.val_size=1", "trainer.max_steps=1"])


def test_warnings_name_the_first_places_in_file_order_and_agree_in_number(tmp_path):
    """They named no place ("2 training examples repeat an earlier one") and said "1 ... examples have"."""
    rows = ([_qa(f"q{i}", "a") for i in range(12)] + [_qa("q0", "a"), _qa("q1", "a")]
            + [_qa(f"e{i}", "") for i in range(5)])
    train = _write(tmp_path / "t.jsonl", rows)
    report = quality.assess(_splits(train, _write(tmp_path / "v.jsonl", [_qa("other", "x")])))
    assert report["duplicate_sources"] == [f"{train}:13 = {train}:1", f"{train}:14 = {train}:2"]
    assert f"2 training examples repeat an earlier one (e.g. {train}:13 = {train}:1, {train}:14 = {train}:2)" \
        in report["warnings"]
    assert report["empty_target_sources"] == [f"{train}:{line}" for line in range(15, 20)]
    assert (f"5 training examples have an empty target (e.g. {train}:15, {train}:16, {train}:17 and 2 more)"
            in report["warnings"])


def test_a_conversation_ending_with_a_user_turn_is_named_as_such_not_as_an_empty_answer(tmp_path):
    """Scraped ShareGPT logs often end with the user's unanswered message: the earlier answers are trained, so
    "has an empty target" was wrong; the warning says what is wrong and what would be valid."""
    chat = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
             + ([{"role": "user", "content": "thanks!"}] if i in (2, 4) else [])} for i in range(6)]
    train = _write(tmp_path / "t.jsonl", chat + [_qa("blank", " ")])
    report = quality.assess(_splits(train, _write(tmp_path / "v.jsonl", [_qa("other", "x")])))
    assert report["empty_targets"]["train"] == 1  # the trailing conversations' target is their last answer
    assert f"1 training example has an empty target (e.g. {train}:7)" in report["warnings"]
    trailing = [w for w in report["warnings"] if "not the assistant's" in w]
    assert trailing == [f"2 training conversations end with a turn that is not the assistant's (e.g. {train}:3, "
                        f"{train}:5): turns after the last answer train nothing, and held out such a conversation "
                        "is scored on its last answer, the turns after it left out of the prompt; end each "
                        "conversation with its assistant turn"]


def test_a_held_out_conversation_ending_with_a_user_turn_is_scored_on_its_last_answer(tmp_path):
    """It was scored against an empty reference (every generation a miss, whatever the model learned), with
    the unanswered turn as the prompt: the reference is the last answer, the prompt the turns before it, as
    in training; the data report reads it the same way (duplicates, leakage, labels) and stratify too."""
    from tuneforge.evaluation import prompts_and_references, split_example

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"},
             {"role": "assistant", "content": "Lima"}, {"role": "user", "content": "thanks!"},
             {"role": "user", "content": "bye"}]
    val = _write(tmp_path / "v.jsonl", [{"messages": turns}])
    splits = _splits(_write(tmp_path / "t.jsonl", [_qa("Capital of Chile?", "Santiago")] * 2), val)
    held = splits.val[0]
    assert split_example(held) == (turns[:2], "Lima")
    prompts, references = prompts_and_references(build_tiny_tokenizer(), [held])
    assert references == ["Lima"] and prompts[0].endswith("Capital of Peru?<|im_end|>\n<|im_start|>assistant\n")
    assert "thanks!" not in prompts[0]
    assert quality.prompt_and_target(held) == ("system: Be brief.\nuser: Capital of Peru?", "Lima")
    assert quality.assess(splits)["empty_targets"]["val"] == 0
    # a prompt without any answer stays all prompt, with an empty reference (what a prompt record is)
    assert split_example({"messages": turns[:2]}) == (turns[:2], "")
    # the baselines' retrieval query, their leak check and predictions.jsonl's `message` read it the same way
    from tuneforge.evaluation.baselines import final_exchange_key, qa_key, query_text
    from tuneforge.evaluation.generation import user_message

    assert query_text(held) == "Capital of Peru?" and user_message(split_example(held)[0]) == "Capital of Peru?"
    assert final_exchange_key(held) == qa_key("Capital of Peru?", "Lima")
    # data.stratify labels such a conversation by its last answer too (it was refused as having none)
    rows = [{"messages": turns[1:]}] * 4 + [_qa(f"q{i}", "Paris") for i in range(4)]
    stratified = _splits(_write(tmp_path / "s.jsonl", rows), "null", stratify="true", val_size=2)
    assert sorted(quality.prompt_and_target(ex)[1] for ex in stratified.val) == ["Lima", "Paris"]


def test_an_empty_rejected_response_is_warned_about_as_an_empty_chosen_one_is(tmp_path):
    """An empty 'chosen' was warned about ("has an empty target"), an empty 'rejected' not at all."""
    rows = ([_pair(0, "Good answer.", ""), _pair(1, "", "Bad answer."), _pair(2, "Fine.", "   ")]
            + [_pair(i, f"good {i}", f"bad {i}") for i in range(3, 8)])
    train = _write(tmp_path / "p.jsonl", rows)
    val = _write(tmp_path / "pv.jsonl", [_pair(99, "yes", ""), _pair(98, "yes", "no")])
    report = quality.assess(_splits(train, val, shuffle="false"))
    assert report["empty_targets"] == {"train": 1, "val": 0}
    assert f"1 training example has an empty target (e.g. {train}:2)" in report["warnings"]
    assert report["empty_rejected"] == {"train": 2, "val": 1}
    assert report["empty_rejected_sources"] == [f"{train}:1", f"{train}:3"]
    assert (f"2 training examples have an empty rejected response (e.g. {train}:1, {train}:3): the pair teaches "
            "only that an answer beats none; give each pair its rejected response") in report["warnings"]
    quality.check(report, QualityConfig())  # a warning, not a stop
    assert "empty_rejected" not in quality.assess(_splits(*_default_files(tmp_path)))


def test_preference_token_counts_read_both_sides_and_over_long_rejected_ones_are_counted(tmp_path):
    """Only the chosen side (input_ids) was counted: a pair whose rejected response was far longer showed the
    chosen length as its longest, so max_length looked safe when it was not."""
    long_rejected = _pair(0, "Short.", "word " * 40)
    rows = [long_rejected] + [_pair(i, f"good {i}", f"bad {i}") for i in range(1, 6)]
    train = _write(tmp_path / "p.jsonl", rows)
    val = _write(tmp_path / "pv.jsonl", [_pair(99, "yes " * 30, "no")])
    splits = _splits(train, val, shuffle="false", max_length=512)
    pair = splits.train[0]
    chosen, rejected = len(pair["chosen_input_ids"]), len(pair["rejected_input_ids"])
    assert rejected > chosen + 150
    tokens = quality.assess(splits)["tokens"]
    assert tokens["train"]["max"] == rejected
    assert tokens["train"]["total"] == sum(len(ex["chosen_input_ids"]) + len(ex["rejected_input_ids"])
                                           for ex in splits.train)
    assert tokens["val"]["max"] == len(splits.val[0]["chosen_input_ids"])  # the longer side, chosen here
    # truncation and drops count a pair over max_length on either side
    cut = _splits(train, val, shuffle="false", max_length=chosen + 5)
    assert (cut.stats["truncated"], cut.stats["dropped"]) == (2, 0)  # the long rejected one, the long chosen one
    assert len(cut.train[0]["rejected_input_ids"]) == chosen + 5
    dropped = _splits(train, val, shuffle="false", max_length=chosen + 5, truncation="drop")
    assert (dropped.stats["truncated"], dropped.stats["dropped"]) == (0, 2)
    assert f"{train}:1" not in [ex["source"] for ex in dropped.train]


def test_label_balance_reads_answers_as_text_never_token_ids(tmp_path):
    """Template-free segments and completion text have no answer text: their repeated trained tokens were shown
    as labels ('68 224 24 16 ...') and warned about per label."""
    rows = [{"segments": [{"label": False, "text": f"Review {i}: "}, {"label": True, "text": "positive"}]}
            for i in range(10)]
    val = [{"segments": [{"label": False, "text": "Review x: "}, {"label": True, "text": "negative"}]}]
    report = quality.assess(_splits(_write(tmp_path / "s.jsonl", rows), _write(tmp_path / "sv.jsonl", val)))
    assert report["labels"] is None and "val_labels" not in report
    assert not [w for w in report["warnings"] if "label" in w]
