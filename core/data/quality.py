"""The data quality report, made before any training.

:func:`assess` counts what commonly spoils a fine-tune: duplicates, empty
targets, over-long examples, held-out examples that also occur in the
training data (leakage) and, for classification-like data, the label
balance.  :func:`check` turns the serious problems into one
:class:`~tuneforge.errors.DataError` unless the ``quality`` config allows them.

Examples are compared by their normalised prompt + target text (lowercase,
whitespace collapsed): the target is the last assistant turn (a tool-call turn's text includes its calls,
see :func:`tuneforge.data.message_text`), the prompt every message before it; turns after it (a user
turn left unanswered) are neither, as in evaluation (:func:`tuneforge.evaluation.split_example`).
Examples without ``messages`` (raw token datasets) are compared by their token ids.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Optional, Sequence

from tuneforge.data import IGNORE_INDEX, ANSWERLESS_KINDS, message_text
from tuneforge.errors import DataError


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def last_answer(messages) -> Optional[int]:
    """The index of the last assistant turn of ``messages`` (None: there is none)."""
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"), None)


def prompt_and_target(example: dict, key: str = "messages") -> tuple[str, str]:
    """``(prompt text, target text)`` of an example (messages joined by role): the target is the last
    assistant turn, the prompt the messages before it (no assistant turn: all of them, and no target);
    ``key="rejected_messages"``: the rejected side of a preference pair."""
    messages = example.get(key)
    if messages:
        final = last_answer(messages)
        prompt_turns = messages[:final] if final is not None else messages
        prompt = "\n".join(f"{m['role']}: {message_text(m)}" for m in prompt_turns)
        return prompt, message_text(messages[final]) if final is not None else ""
    ids = example.get("input_ids", [])
    labels = example.get("labels", [])
    return " ".join(map(str, ids)), " ".join(str(t) for t in labels if t != IGNORE_INDEX)


def example_key(example: dict) -> str:
    """The normalised prompt + target text used for duplicates and leakage."""
    prompt, target = prompt_and_target(example)
    return _normal(prompt) + "\x00" + _normal(target)


#: the token sequences of a preference pair (``input_ids`` is a copy of the chosen side)
PAIR_SIDES = ("chosen_input_ids", "rejected_input_ids")


def _token_stats(examples: Sequence[dict]) -> dict:
    """``min``, ``median`` and ``max`` tokens per example and their ``total``; a preference pair counts as
    its longer side (the one ``data.max_length`` cuts first), its total as both sides."""
    sides = [[len(ex[key]) for key in PAIR_SIDES if key in ex] or [len(ex.get("input_ids", []))]
             for ex in examples]
    lengths = [max(lengths) for lengths in sides]
    if not lengths:
        return {"min": 0, "median": 0, "max": 0, "total": 0}
    return {"min": min(lengths), "median": float(statistics.median(lengths)), "max": max(lengths),
            "total": sum(map(sum, sides))}


def _duplicates(keys: Sequence[str]) -> int:
    return len(keys) - len(set(keys))


def _place_order(source: str) -> tuple:
    """A sort key of a record's place that orders line and row numbers as numbers (``d.jsonl:9`` before
    ``d.jsonl:10``): file order."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", source))


def repeated_sources(examples: Sequence[dict], keys: Sequence[str]) -> list:
    """``"<source> = <source of the first>"`` for each example whose text an example earlier in the file
    has too (``keys``: their :func:`example_key`), in file order."""
    first, repeats = {}, []
    for source, key in sorted(((ex.get("source", "?"), key) for ex, key in zip(examples, keys)),
                              key=lambda pair: _place_order(pair[0])):
        if key in first:
            repeats.append(f"{source} = {first[key]}")
        else:
            first[key] = source
    return repeats


def _with_targets(examples: Sequence[dict]) -> list:
    """The examples that carry a target (not the prompts an online objective answers itself)."""
    return [ex for ex in examples if ex.get("format") not in ANSWERLESS_KINDS]


def _empty_target_sources(examples: Sequence[dict]) -> list:
    """The sources of the examples whose target is empty or whitespace, in file order."""
    return sorted((ex.get("source", "?") for ex in _with_targets(examples) if not prompt_and_target(ex)[1].strip()),
                  key=_place_order)


def _empty_targets(examples: Sequence[dict]) -> int:
    return len(_empty_target_sources(examples))


def _empty_rejected_sources(examples: Sequence[dict]) -> list:
    """The sources of the preference pairs whose rejected response is empty or whitespace, in file order."""
    return sorted((ex.get("source", "?") for ex in examples if ex.get("rejected_messages")
                   and not prompt_and_target(ex, "rejected_messages")[1].strip()), key=_place_order)


def _trailing_turn_sources(examples: Sequence[dict]) -> list:
    """The sources of the conversations that end with a turn that is not the assistant's (a user turn left
    unanswered), in file order: nothing after their last answer is trained, and held out they are scored
    on that answer, the turns after it left out (:func:`prompt_and_target`)."""
    return sorted((ex.get("source", "?") for ex in _with_targets(examples)
                   if (ex.get("messages") or [{"role": "assistant"}])[-1].get("role") != "assistant"),
                  key=_place_order)


def _count_phrase(count: int, singular: str, plural: str) -> str:
    """``"1 training example has"`` / ``"2 training examples have"``: ``count`` and the phrase that agrees."""
    return f"{count} {singular if count == 1 else plural}"


def _for_instance(places: Sequence[str], shown: int = 3) -> str:
    """`` (e.g. a.jsonl:8, a.jsonl:9 and 4 more)`` for the first ``shown`` places; "" for none."""
    from tuneforge.data.samples import record_places

    return f" (e.g. {record_places(places, shown)})" if places else ""


def identical_pairs(examples: Sequence[dict]) -> Optional[list]:
    """Sources of the preference examples whose chosen and rejected responses are the same tokens
    (None: no preference examples).  Such a pair teaches nothing: its DPO loss stays at ln 2."""
    pairs = [ex for ex in examples if "chosen_input_ids" in ex and "rejected_input_ids" in ex]
    if not pairs:
        return None
    return [ex.get("source", "?") for ex in pairs if ex["chosen_input_ids"] == ex["rejected_input_ids"]]


#: fewer held-out examples of a training label than this is warned about (per-label results need some)
MIN_HELD_OUT_PER_LABEL = 3


def label_balance(examples: Sequence[dict], max_labels: int = 10) -> tuple:
    """``({target: count}, others)`` when the data is mostly classification: at most ``max_labels`` targets
    that repeat, covering at least two thirds of the examples (``others``: the examples whose target occurs
    once, e.g. general-ability rehearsal rows mixed in); ``(None, 0)`` otherwise."""
    examples = [ex for ex in _with_targets(examples) if ex.get("messages")]  # answers as text, not token ids
    targets = Counter(prompt_and_target(ex)[1].strip() for ex in examples)
    repeated = {target: count for target, count in targets.most_common() if count > 1}
    covered = sum(repeated.values())
    if not repeated or len(repeated) > max_labels or 3 * covered < 2 * len(examples):
        return None, 0
    return repeated, len(examples) - covered


def assess(splits, max_labels: int = 10, identical_pair_share: float = 0.1) -> dict:
    """Counts for the data report from a :class:`tuneforge.data.DataSplits`.

    Returns ``records`` and ``examples`` per split, ``tokens`` (min, median,
    max, total) per split (a preference pair: its longer side; total: both sides), ``duplicates``
    (train examples repeating an earlier one) and ``val_duplicates``, ``empty_targets`` per split, ``truncated`` and
    ``dropped`` (over ``data.max_length``, from the dataset's stats), ``duplicate_sources`` and
    ``empty_target_sources`` (up to 5 training examples each, a repeat as ``"<source> = <source of
    the first>"``), ``oversized``
    (records left out as over ``data.max_record_chars``), ``unused_keys`` (record keys that nothing
    read, from the dataset's stats: ``{key: {"records", "first"}}``; logged once when the data loads),
    ``leakage`` (held-out examples whose text also occurs in training, with up
    to 5 ``leakage_sources``), ``labels`` (label balance or None; ``label_others``: the
    examples outside it, :func:`label_balance`; ``val_labels``: the held-out examples of each label) and
    ``warnings``.  Preference data also gets ``preference_pairs`` and
    ``identical_pairs`` (training pairs whose chosen and rejected responses are
    the same, with up to 5 ``identical_pair_sources``): a warning when more than
    ``identical_pair_share`` of the pairs are, a serious problem (:func:`problems`)
    when all are; and ``empty_rejected`` per split (pairs whose rejected response is empty or
    whitespace, with up to 5 training ``empty_rejected_sources``; warned about as an empty target is).
    A conversation ending with a turn that is not the assistant's is warned about; its target is its
    last answer (:func:`prompt_and_target`).
    """
    train, val = list(splits.train), list(splits.val)
    stats = dict(getattr(splits, "stats", None) or {})
    train_keys = [example_key(ex) for ex in train]
    val_keys = [example_key(ex) for ex in val]
    seen = set(train_keys)
    leaked = [ex.get("source", "?") for ex, key in zip(val, val_keys) if key in seen]
    empty, repeats = _empty_target_sources(train), repeated_sources(train, train_keys)
    report = {
        "records": {"train": stats.get("train_records", len(train)), "val": stats.get("val_records", len(val))},
        "examples": {"train": len(train), "val": len(val)},
        "tokens": {"train": _token_stats(train), "val": _token_stats(val)},
        "duplicates": len(repeats),
        "val_duplicates": _duplicates(val_keys),
        "empty_targets": {"train": len(empty), "val": _empty_targets(val)},
        "duplicate_sources": repeats[:5],
        "empty_target_sources": empty[:5],
        "truncated": int(stats.get("truncated", 0)),
        "dropped": int(stats.get("dropped", 0)),
        "oversized": int(stats.get("oversized", 0)),
        "unused_keys": dict(stats.get("unused_keys") or {}),
        "leakage": len(leaked),
        "leakage_sources": leaked[:5],
        **dict(zip(("labels", "label_others"), label_balance(train, max_labels))),
    }
    if report["labels"] and val:
        held = Counter(prompt_and_target(ex)[1].strip() for ex in _with_targets(val))
        report["val_labels"] = {label: held.get(label, 0) for label in report["labels"]}
    same = identical_pairs(train)
    if same is not None:
        report["identical_pairs"] = len(same)
        report["identical_pair_sources"] = same[:5]
        report["preference_pairs"] = sum("chosen_input_ids" in ex for ex in train)
        rejected = _empty_rejected_sources(train)
        report["empty_rejected"] = {"train": len(rejected), "val": len(_empty_rejected_sources(val))}
        report["empty_rejected_sources"] = rejected[:5]
    report["warnings"] = _warnings(report, train, val, repeats, empty, identical_pair_share)
    return report


def _warnings(report: dict, train: list, val: list, repeats: list, empty: list, identical_pair_share: float) -> list:
    """The report's warnings, one line each (``repeats``, ``empty``: the training sources behind them)."""
    warnings = []
    if report["duplicates"]:
        warnings.append(_count_phrase(report["duplicates"], "training example repeats", "training examples repeat")
                        + " an earlier one" + _for_instance(repeats))
    if empty:
        warnings.append(_count_phrase(len(empty), "training example has", "training examples have")
                        + " an empty target" + _for_instance(empty))
    rejected = report.get("empty_rejected_sources") or []
    if rejected:
        warnings.append(_count_phrase(report["empty_rejected"]["train"], "training example has",
                                      "training examples have") + " an empty rejected response"
                        + _for_instance(rejected) + ": the pair teaches only that an answer beats none; give "
                        "each pair its rejected response")
    trailing = _trailing_turn_sources(train)
    if trailing:
        warnings.append(_count_phrase(len(trailing), "training conversation ends", "training conversations end")
                        + " with a turn that is not the assistant's" + _for_instance(trailing) + ": turns after "
                        "the last answer train nothing, and held out such a conversation is scored on its last "
                        "answer, the turns after it left out of the prompt; end each conversation with its "
                        "assistant turn")
    if report["truncated"] or report["dropped"]:
        warnings.append(f"{report['truncated']} examples truncated and {report['dropped']} dropped "
                        "as longer than data.max_length")
    if report["oversized"]:
        warnings.append(f"{report['oversized']} records left out as over data.max_record_chars")
    if not val:
        warnings.append("no held-out examples: evaluators have nothing to score")
    pairs, same_count = report.get("preference_pairs"), report.get("identical_pairs")
    if same_count and same_count < pairs and same_count > identical_pair_share * pairs:
        warnings.append(f"{same_count} of {pairs} preference pairs have the same chosen and rejected response "
                        f"(e.g. {report['identical_pair_sources'][0]}); they teach nothing (over "
                        f"quality.identical_pair_share={identical_pair_share})")
    if report["labels"] and len(report["labels"]) > 1:
        counts = list(report["labels"].values())
        if max(counts) > 3 * min(counts):
            warnings.append(f"labels are imbalanced: {report['labels']}")
    thin = {label: n for label, n in (report.get("val_labels") or {}).items() if n < MIN_HELD_OUT_PER_LABEL}
    if thin and len(report.get("val_labels") or {}) > 1:
        warnings.append(f"held-out examples per label (of {len(report['val_labels'])} labels): "
                        + ", ".join(f"'{label}' has {n}" for label, n in thin.items())
                        + ", too few to tell how the tuned model does on it (data.stratify=true holds out every "
                        "label in proportion; or hold out more)")
    return warnings


def problems(report: dict, config) -> list:
    """The serious problems of a report that ``config`` (``quality``) does not allow."""
    found = []
    if report["leakage"] and not config.allow_leakage:
        found.append(f"{report['leakage']} of {report['examples']['val']} held-out examples also occur in the "
                     f"training data (leakage, e.g. {report['leakage_sources'][0]}); fix the split or set "
                     "quality.allow_leakage=true")
    train_examples = report["examples"]["train"]
    if train_examples and report["empty_targets"]["train"] == train_examples and not config.allow_empty_targets:
        found.append("every training target is empty or whitespace; set quality.allow_empty_targets=true "
                     "if that is intended")
    pairs = report.get("preference_pairs")
    if pairs and report.get("identical_pairs") == pairs:
        found.append(f"all {pairs} preference pairs have the same chosen and rejected response (e.g. "
                     f"{report['identical_pair_sources'][0]}): a preference loss learns nothing from them; give "
                     "each pair a different rejected response")
    if train_examples < config.min_train_examples:
        found.append(f"only {train_examples} training examples, fewer than quality.min_train_examples="
                     f"{config.min_train_examples}; add data or lower the minimum")
    return found


def check(report: dict, config) -> None:
    """Raise one :class:`DataError` naming every serious problem not allowed by ``config``."""
    found = problems(report, config)
    if found:
        raise DataError("data quality: " + "; ".join(found))
