"""Prompting baselines: helpers for baseline plugins, and the host side that runs them.

A baseline (:class:`tuneforge.BaselineSpec`) answers "was fine-tuning worth
it, compared with prompting the base model better?".  Its ``rewrite`` gets
the base model, the tokenizer, the training and the held-out examples and
returns the held-out examples with extra turns before their own (few-shot
demonstrations, retrieved examples, a system prompt).  The host
(:func:`run_baselines`) checks what came back (:func:`check_rewritten`),
re-tokenizes it and scores it with the selected held-out evaluators in one
evaluation pass per baseline: one more column of the run's comparison.

Helpers for plugin authors (``from tuneforge.evaluation import ...``):
:func:`demonstration_pool` (the training examples that can serve as
demonstrations, never a held-out one), :func:`demonstration_turns`,
:func:`with_demonstrations`, :func:`query_text`, :func:`examples_by_label`,
:func:`is_plain_turn` and :func:`held_out_overlaps` (demonstrations from
elsewhere checked against the held-out examples as the pool is).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from tuneforge.errors import PluginError

log = logging.getLogger("tuneforge")


# ---------------------------------------------------------------------------
# Helpers for baseline plugins
# ---------------------------------------------------------------------------


def _normal(text: str) -> str:
    return " ".join(str(text).lower().split())


def is_plain_turn(message: dict) -> bool:
    """Whether a message can be part of a demonstration: a user or assistant turn of plain text (no tool
    calls, no tool results)."""
    return (message.get("role") in ("user", "assistant") and isinstance(message.get("content"), str)
            and not message.get("tool_calls"))


def qa_key(question: str, answer: str) -> str:
    """The normalised (question, answer) text of one exchange (lowercase, whitespace collapsed)."""
    return _normal(question) + "\x00" + _normal(answer)


def _last_answer(messages: Sequence[dict]) -> Optional[int]:
    """The index of the last assistant turn: the answer an example is scored on (turns after it, a user
    message left unanswered, are not part of it: :func:`tuneforge.evaluation.generation.split_example`)."""
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"), None)


def _final_exchange(example: dict) -> Optional[tuple]:
    """``(question, answer)``: the assistant answer an example is scored on and the user turn right before
    it (None when that answer does not follow a user turn)."""
    messages = example.get("messages") or []
    last = _last_answer(messages)
    if not last or messages[last - 1].get("role") != "user":
        return None
    return messages[last - 1].get("content") or "", messages[last].get("content") or ""


def final_exchange_key(example: dict) -> Optional[str]:
    """:func:`qa_key` of an example's final exchange (None when it does not end with a user turn answered
    by the assistant)."""
    exchange = _final_exchange(example)
    return None if exchange is None else qa_key(*exchange)


def held_out_overlaps(demonstrations: Sequence[dict], held_out: Sequence[dict]) -> tuple:
    """``(answered, asked)``: ``(demonstration source, held-out source)`` pairs, in the demonstrations' order,
    where an exchange of a demonstration (a user turn and the assistant's answer right after it) is a
    held-out example's final question and answer (``answered``: it would show the answer; compared as
    :func:`demonstration_pool` compares, by :func:`qa_key`), or asks that question with another answer
    (``asked``).  For demonstrations that do not come from the pool (a baseline's own file)."""
    answers, questions = {}, {}
    for example in held_out:
        exchange = _final_exchange(example)
        if exchange is not None:
            answers.setdefault(qa_key(*exchange), example.get("source", "?"))
            questions.setdefault(_normal(exchange[0]), example.get("source", "?"))
    answered, asked = [], []
    for shot in demonstrations:
        turns = demonstration_turns(shot)
        for question, answer in zip(turns, turns[1:]):
            if question.get("role") != "user" or answer.get("role") != "assistant":
                continue
            asked_text, answer_text = question.get("content") or "", answer.get("content") or ""
            if qa_key(asked_text, answer_text) in answers:
                answered.append((shot.get("source", "?"), answers[qa_key(asked_text, answer_text)]))
            elif _normal(asked_text) in questions:
                asked.append((shot.get("source", "?"), questions[_normal(asked_text)]))
    return answered, asked


def demonstration_turns(example: dict) -> list:
    """The example's turns without its system message(s): what it contributes as a demonstration."""
    return [dict(m) for m in example.get("messages") or [] if m.get("role") != "system"]


def demonstration_pool(train: Sequence[dict], held_out: Sequence[dict] = ()) -> list:
    """The training examples usable as demonstrations, in their order.

    Kept: chat examples whose turns (besides system messages) are plain user
    and assistant texts (no tool calls, no tool results) ending with the
    assistant's answer.  Left out: any whose final question and answer are
    also those of a held-out example (leakage the data check allowed), so a
    demonstration can never show a held-out answer.
    """
    held = {key for key in (final_exchange_key(ex) for ex in held_out) if key is not None}
    pool = []
    for example in train:
        turns = demonstration_turns(example)
        if not turns or turns[-1]["role"] != "assistant" or not all(is_plain_turn(t) for t in turns):
            continue
        if final_exchange_key(example) in held:
            continue
        pool.append(example)
    return pool


def examples_by_label(pool: Sequence[dict], max_labels: int = 10) -> Optional[dict]:
    """``{label: [examples whose answer it is]}`` (labels sorted) when the pool's answers are labels (a
    classification set: :func:`tuneforge.data.quality.label_balance`; examples with other answers, e.g.
    rehearsal rows, are left out); None when they are not, or there is only one label."""
    from tuneforge.data.quality import label_balance, prompt_and_target

    labels, _ = label_balance(pool, max_labels)
    if not labels or len(labels) < 2:
        return None
    grouped: dict = {label: [] for label in sorted(labels)}
    for example in pool:
        answer = prompt_and_target(example)[1].strip()
        if answer in grouped:
            grouped[answer].append(example)
    return grouped


def query_text(example: dict) -> str:
    """The user side of an example's prompt (its user turns before the answer it is scored on): what
    retrieval compares."""
    messages = list(example.get("messages") or [])
    last = _last_answer(messages)
    if last is not None:
        messages = messages[:last]
    return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")


def with_demonstrations(example: dict, demonstrations: Sequence[dict]) -> dict:
    """A copy of ``example`` whose messages are its system message(s), then each demonstration's
    turns (:func:`demonstration_turns`), then its own turns."""
    messages = list(example.get("messages") or [])
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    turns = [turn for demo in demonstrations for turn in demonstration_turns(demo)]
    return dict(example, messages=[*messages[:head], *turns, *messages[head:]])


# ---------------------------------------------------------------------------
# The host side
# ---------------------------------------------------------------------------


def baselines_unavailable(tokenizer, splits) -> Optional[str]:
    """Why no prompting baseline can run on this data (None when they can): they need held-out chat
    examples ending in an answer, and a chat template to render demonstration turns."""
    from tuneforge.data import has_chat_template

    if not splits.val:
        return "there are no held-out examples"
    if not all((ex.get("messages") or [{}])[-1].get("role") == "assistant" for ex in splits.val):
        return "the held-out examples are not chat or instruction records ending in an answer"
    if not has_chat_template(tokenizer, splits.chat_template):
        return "the tokenizer has no chat template to render demonstration turns (set data.chat_template)"
    return None


def _tail(messages: Sequence[dict]) -> list:
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    return list(messages[head:])


def check_rewritten(name: str, held_out: Sequence[dict], rewritten) -> list:
    """What a baseline returned, checked: one example per held-out example, in order, each ending with
    that example's own (non-system) turns, and no added turn pair repeating a held-out exchange.

    Raises :class:`tuneforge.PluginError` naming the baseline and the example.
    """
    rewritten = list(rewritten or [])
    if len(rewritten) != len(held_out):
        raise PluginError(f"baseline '{name}' returned {len(rewritten)} examples for {len(held_out)} held-out ones; "
                          "rewrite must return every held-out example, in order")
    held = {}
    for example in held_out:
        key = final_exchange_key(example)
        if key is not None:
            held[key] = example.get("source", "?")
    for original, new in zip(held_out, rewritten):
        source = original.get("source", "?")
        messages = list((new or {}).get("messages") or [])
        own = _tail(original["messages"])
        if len(messages) < len(own) or messages[len(messages) - len(own):] != own:
            raise PluginError(f"baseline '{name}' changed the turns of held-out example {source}; it may only add "
                              "turns (demonstrations, a system prompt) before them")
        added = messages[:len(messages) - len(own)]
        for question, answer in zip(added, added[1:]):
            if question.get("role") == "user" and answer.get("role") == "assistant":
                leaked = held.get(qa_key(question.get("content") or "", answer.get("content") or ""))
                if leaked is not None:
                    raise PluginError(f"baseline '{name}' showed held-out example {leaked} as a demonstration "
                                      f"in the prompt of {source}; demonstrations must come from the training "
                                      "examples (see tuneforge.evaluation.demonstration_pool)")
    return rewritten


def retokenize(tokenizer, original: dict, rewritten: dict, chat_template: Optional[str] = None) -> dict:
    """The rewritten example with fresh ``input_ids``/``labels``: the whole conversation rendered, the
    loss only on the example's own answer turns (not on the demonstrations)."""
    from tuneforge.data import tokenize_messages

    messages = rewritten["messages"]
    own_from = len(messages) - len(_tail(original["messages"]))
    encoded = tokenize_messages(tokenizer, messages, chat_template=chat_template, train_from=own_from,
                                tools=original.get("tools"))
    return dict(rewritten, **encoded)


def describe_baseline(spec, config, info: Optional[dict] = None) -> str:
    """The column label: ``spec.describe(config)`` (given ``info=``, what the baseline's run reported, when it
    takes that keyword), or the baseline's name."""
    if spec.describe is None:
        return spec.name
    from tuneforge.host.guard import spec_call
    from tuneforge.specs import call_accepting

    return str(spec_call(spec, "describe", call_accepting, spec.describe, config, info=dict(info or {}),
                         named_only=("info",)))


def rewrite_held_out(key: str, baseline, settings, model, tokenizer, splits, context=None, retrievers=None,
                     info: Optional[dict] = None) -> list:
    """One baseline's (a validated component: spec and typed config) rewritten, checked and
    re-tokenized held-out examples.  ``retrievers`` is the plugins' ``retriever`` registry (for the
    baseline's ``build_retriever``); ``info`` the dict the baseline may fill."""
    from tuneforge.evaluation.retrieval import retriever_builder
    from tuneforge.specs import call_accepting

    from tuneforge.host.guard import spec_call

    build_retriever = None if retrievers is None else retriever_builder(retrievers, f"baselines.{key}.retriever")
    rewritten = spec_call(baseline.spec, "rewrite", call_accepting, baseline.spec.rewrite, model, tokenizer,
                          list(splits.train), list(splits.val), baseline.config, seed=int(settings.seed),
                          chat_template=splits.chat_template, context=context, info=info if info is not None else {},
                          build_retriever=build_retriever)
    rewritten = check_rewritten(key, splits.val, rewritten)
    return [retokenize(tokenizer, original, new, splits.chat_template) for original, new in zip(splits.val, rewritten)]


def prompt_tokens_per_query(tokenizer, examples: Sequence[dict], chat_template: Optional[str] = None) -> float:
    """Mean token count of the rendered prompts of ``examples`` (generation prompt included)."""
    from tuneforge.evaluation.generation import prompts_and_references

    if not examples:
        return 0.0
    prompts, _ = prompts_and_references(tokenizer, examples, chat_template=chat_template)
    return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)


def generation_seconds_per_query(timings: dict, set_name: str = "val") -> Optional[float]:
    """Measured generation time per held-out prompt of one pass (None when nothing was generated)."""
    timing = (timings or {}).get(set_name)
    if not timing or not timing.get("queries"):
        return None
    return float(timing["seconds"]) / int(timing["queries"])


def run_baselines(baselines: dict, evaluators: dict, settings, model, tokenizer, splits, context=None,
                  done: Optional[dict] = None, retrievers=None, rewards=None) -> tuple:
    """Every selected baseline as a column: ``({key: column}, {key: why it was skipped})``.

    ``baselines`` and ``evaluators`` map config keys to validated components
    (``RunConfig.baselines`` / ``.evaluators``); ``retrievers`` is the
    plugins' ``retriever`` registry, from which a baseline's
    ``build_retriever`` builds; ``rewards``: the run's built rewards, for the evaluators that score with
    them (``evaluation.rewards``).

    Each column is ``{"name", "label", "info", "metrics", "scores", "timings",
    "prompt_tokens", "predictions"}`` (``info``: what the baseline's rewrite
    reported about itself): the baseline's rewritten held-out
    examples scored by the held-out evaluators (those whose metrics all
    belong to another section, such as ``forgetting``, do not depend on the
    prompts and are skipped) in one evaluation pass labelled with the key.
    Columns already in ``done`` (a resumed run's saved ones) are reused.
    When the data cannot take demonstrations (:func:`baselines_unavailable`)
    no baseline runs, and a baseline that added no turn to any prompt (no
    usable demonstration in the training set) gives no column: the reason
    is logged and returned.
    """
    from tuneforge.evaluation.generation import merge_predictions
    from tuneforge.evaluation.runner import run_evaluators

    if not baselines:
        return {}, {}
    reason = baselines_unavailable(tokenizer, splits)
    if reason is not None:
        log.warning("prompting baselines skipped: %s", reason)
        return {}, {key: reason for key in baselines}
    columns, skipped = {}, {}
    for key, baseline in baselines.items():
        if done and key in done:
            columns[key] = done[key]
            continue
        spec = baseline.spec
        if spec.answer is not None:
            column, reason = answer_column(key, baseline, evaluators, settings, model, tokenizer, splits, context,
                                           rewards)
            if column is None:
                skipped[key] = reason
                log.info("baseline %s skipped: %s", key, reason)
            else:
                columns[key] = column
                _log_column(column, context)
            continue
        info: dict = {}
        examples = rewrite_held_out(key, baseline, settings, model, tokenizer, splits, context, retrievers, info)
        if all(len(new["messages"]) == len(old["messages"]) and new["messages"] == old["messages"]
               for new, old in zip(examples, splits.val)):
            skipped[key] = "it added nothing to any prompt (no usable demonstration in the training data)"
            log.warning("baseline %s skipped: %s", key, skipped[key])
            continue
        values, one_pass = run_evaluators(evaluators, settings, model, tokenizer, examples, key,
                                          chat_template=splits.chat_template, context=context, held_out_only=True,
                                          rewards=rewards)
        demonstrations = {ex.get("source", ""): ex["demonstrations"] for ex in examples if "demonstrations" in ex}
        rows = merge_predictions({key: one_pass})
        for row in rows:
            if row["source"] in demonstrations:
                row["demonstrations"] = demonstrations[row["source"]]
        columns[key] = {"name": spec.name, "label": describe_baseline(spec, baseline.config, info), "info": info,
                        "metrics": values,
                        "scores": one_pass.example_scores, "timings": one_pass.timings,
                        "prompt_tokens": prompt_tokens_per_query(tokenizer, examples, splits.chat_template),
                        "predictions": rows}
        _log_column(columns[key], context)
    return columns, skipped


def _answers_problem(result, count: int) -> Optional[str]:
    """What is wrong with a baseline's ``answer`` result (None when it is a list of ``count`` strings, or
    None), as it would follow "returned"."""
    from tuneforge.host.guard import shown, type_name

    if result is None:
        return None
    if not isinstance(result, (list, tuple)) or len(result) != count:
        return type_name(result)
    bad = next((i for i, item in enumerate(result) if not isinstance(item, str)), None)
    return None if bad is None else f"{shown(result[bad])} ({type_name(result[bad])}) as item {bad} of {count}"


def _log_column(column: dict, context) -> None:
    if context is None or context.is_main:
        log.info("baseline %s: %s", column["label"],
                 ", ".join(f"{name} {value:.4g}" for name, value in sorted(column["metrics"].items())) or "no metric")


def answer_column(key: str, baseline, evaluators: dict, settings, model, tokenizer, splits, context=None,
                  rewards=None) -> tuple:
    """``(column, None)`` for a baseline with ``answer`` (no model: its answers are scored as if generated,
    by the evaluators that score generated answers), or ``(None, why there is no column)``."""
    from tuneforge.evaluation.generation import merge_predictions
    from tuneforge.evaluation.runner import run_evaluators
    from tuneforge.host.guard import Returns, spec_call
    from tuneforge.specs import call_accepting

    spec, info = baseline.spec, {"no_model": True}
    expected = (f"a list of {len(splits.val)} strings (one answer per held-out example, in order), or None where it "
                "does not apply (with the reason in info['skipped'])")
    answers = spec_call(spec, "answer", call_accepting, spec.answer, list(splits.train), list(splits.val),
                        baseline.config, seed=int(settings.seed), context=context, info=info,
                        returns=Returns(lambda result: _answers_problem(result, len(splits.val)), expected))
    if answers is None:
        return None, str(info.get("skipped") or "its answer returned None (it does not apply to this data; the "
                                                "baseline may say why in info['skipped'])")
    values, one_pass = run_evaluators(evaluators, settings, model, tokenizer, splits.val, key,
                                      chat_template=splits.chat_template, context=context, held_out_only=True,
                                      rewards=rewards, answers=list(answers))
    if not values:
        return None, (f"none of the selected evaluators ({', '.join(evaluators) or 'none'}) scored its answers: a "
                      "column without a model is scored only by evaluators that read answers through "
                      "tuneforge.evaluation.generate_predictions and do not run the model themselves (e.g. "
                      "exact_match, contains)")
    return {"name": spec.name, "label": describe_baseline(spec, baseline.config, info), "info": info, "metrics": values,
            "scores": one_pass.example_scores, "timings": {}, "prompt_tokens": 0.0,
            "predictions": merge_predictions({key: one_pass})}, None


def join_columns(rows: list, columns: dict) -> list:
    """Add each baseline column's output to the row of the same example (same set, kind and source):
    ``<key>`` (the output), ``<key>_prompt`` (its rewritten prompt) and ``<key>_demonstrations`` (the
    sources of its demonstrations, when the baseline listed them), and its per-example scores under
    ``scores[<key>]``.  Rows that share a source (a dataset that gives several records one) are joined in
    their order."""
    by_key: dict = {}
    for row in rows:
        by_key.setdefault((row["set"], row["kind"], row["source"]), []).append(row)
    for key, column in columns.items():
        taken: dict = {}
        for row in column.get("predictions") or []:
            same = (row["set"], row["kind"], row["source"])
            index = taken[same] = taken.get(same, -1) + 1
            target = by_key[same][index] if index < len(by_key.get(same, ())) else None
            if target is None:
                continue
            target[key] = row.get(key)
            target[f"{key}_prompt"] = row["prompt"]
            if (row.get("scores") or {}).get(key):
                target.setdefault("scores", {})[key] = row["scores"][key]
            if "demonstrations" in row:
                target[f"{key}_demonstrations"] = row["demonstrations"]
    return rows
