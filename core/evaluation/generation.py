"""Helpers for evaluator plugins: prompts, references, shared greedy generation, predictions.

An evaluator (:class:`tuneforge.specs.EvaluatorSpec`) is called as
``evaluate(model, tokenizer, examples, config, *, evaluation)`` (or without
``evaluation`` when its signature does not take it).  Each example is a dict
with ``messages`` (the chat turns the example was trained on), ``record``
(the raw record) and ``source`` (``file:line``), besides its token ids.  For
evaluation an example splits into

* the **prompt**: ``messages`` without the final assistant turn, rendered with
  the same chat template (and tool rendering, from the example's ``tools``)
  as training plus the generation prompt, optionally preceded by few-shot
  turns from the evaluator's config; and
* the **reference**: the content of that final assistant turn (with its tool calls
  written as ``<tool_call>{json}</tool_call>`` lines when it makes any).

The host runs all evaluators of one model state (``base`` before training,
``tuned`` after) in one :class:`EvaluationPass` and hands it to each
evaluator as ``evaluation``.  Given that pass, :func:`generate_predictions`
generates each prompt once: every generation metric with the same prompts and
``max_new_tokens`` scores the same predictions; prompts are rendered with the
pass's chat template; and the pass keeps the predictions so the run can write
``predictions.jsonl`` (the rendered prompt, the user's message, reference,
base output, tuned output, and each example's scores).  Called without a
pass, the helpers share and keep nothing and render prompts with the
tokenizer's own chat template.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from tuneforge.data import message_text, render_prompt
from tuneforge.errors import ConfigError, DataError, PluginError


@dataclass
class EvaluationPass:
    """One evaluation of one model state, shared by the evaluators that run on it.

    ``label``: ``"base"``, ``"tuned"`` (or any name).  ``chat_template``: the
    Jinja text the data was rendered with in training
    (:attr:`tuneforge.data.DataSplits.chat_template`; None: the tokenizer's
    own).  ``predictions``: ``{(set, kind, key): rows}`` where each row has
    ``source``, ``prompt`` (rendered), ``message`` (the user's last turn, as
    the user wrote it), ``reference`` and ``output``, and ``scores``
    (``{reported metric: this example's score}``) once an evaluator recorded
    scores for the rows (:func:`record_scores` with ``rows``); it is also the
    generation cache of the pass.  ``context``: reserved for the run context
    (which process this is, the run directory); None when there is none.
    ``scores``: the per-example scores the running evaluator recorded
    (:func:`record_scores`, ``{metric: {"values", "weights"}}``, as given); the
    host checks them and moves them into ``example_scores`` (as floats) after each evaluator, under the
    reported metric names (``forgetting/contains``).  ``scored_rows``: the
    prediction rows each of those scores belongs to (when the evaluator gave
    them), where the host writes each row's score under the reported name.
    ``timings``: ``{set name: {"seconds", "queries", "batch_s_per_query"}}``,
    the time :func:`generate_predictions` spent generating (cache hits cost
    nothing), the most prompts one generation covered, and the seconds per
    prompt of each batch this process generated (the timing's repeats, for
    its spread).
    ``given_outputs``: ``{example source: output text}`` that
    :func:`generate_predictions` returns instead of generating (for
    ``tuneforge.testing.run_evaluator``; None otherwise); ``given_answers``:
    ``{id(example): answer text}``, the same for a baseline's ``answer`` (matched
    by the example objects the evaluators were given, so examples sharing a source
    get their own answers); ``given_reads`` counts the calls that read either (an
    evaluator that made none scored the model, not the given answers).
    ``rewards``: the run's selected rewards (:class:`tuneforge.rewards.Rewards`,
    ``rewards=[...]``), for evaluators that score generations with them; None
    when the run selects none.
    """

    label: str = "eval"
    chat_template: Optional[str] = None
    predictions: dict = field(default_factory=dict)
    context: Any = None
    given_outputs: Optional[dict] = None
    given_answers: Optional[dict] = None
    given_reads: int = 0
    scores: dict = field(default_factory=dict)
    scored_rows: dict = field(default_factory=dict)
    example_scores: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    rewards: Any = None


# ---------------------------------------------------------------------------
# Prompts and references
# ---------------------------------------------------------------------------


def split_example(example: dict) -> tuple[list, str]:
    """``(prompt messages, reference)``: the messages before the last assistant turn, and its text
    (:func:`tuneforge.data.message_text`: a tool-call turn's calls included).

    A conversation that ends with turns after its last answer (a user message left unanswered, which
    the data quality report warns about) is scored on that answer, as it was trained: the turns after it
    are left out of the prompt.  An example without an assistant turn (a ``prompt`` record) is all
    prompt, with an empty reference.
    """
    messages = example.get("messages")
    if not messages:
        raise DataError(f"{example.get('source', '<example>')}: the example has no 'messages'; generation and "
                        "choice evaluators need chat or instruction records")
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
    if last is None:
        return list(messages), ""
    return list(messages[:last]), message_text(messages[last])


def user_message(messages: Sequence[dict]) -> str:
    """The text of the last user turn of ``messages`` (what the user asked, without the chat template
    or any few-shot turns before it); ``""`` when there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def few_shot_messages(few_shot: Iterable) -> list:
    """Turn config few-shot items into chat turns.

    Each item is ``{"user": ..., "assistant": ...}`` (also accepted:
    ``{"prompt": ..., "response": ...}`` or ``{"instruction", "output"}``).
    """
    from collections.abc import Mapping

    turns = []
    for i, item in enumerate(few_shot or []):
        if not isinstance(item, Mapping):
            raise ConfigError(f"few_shot[{i}] must be a mapping with 'user' and 'assistant', got {item!r}")
        user = item.get("user", item.get("prompt", item.get("instruction")))
        answer = item.get("assistant", item.get("response", item.get("output")))
        if not isinstance(user, str) or not isinstance(answer, str):
            raise ConfigError(f"few_shot[{i}] must have string 'user' and 'assistant' fields, got {sorted(item)}")
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return turns


def with_few_shot(messages: Sequence[dict], shots: Sequence[dict]) -> list:
    """Insert few-shot turns after the leading system message(s), before the example's own turns."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    return [*messages[:head], *shots, *messages[head:]]


def prompts_and_references(tokenizer, examples: Sequence[dict], few_shot: Iterable = (),
                           chat_template: Optional[str] = None, *,
                           evaluation: Optional[EvaluationPass] = None) -> tuple[list, list]:
    """Rendered prompt texts (generation prompt included) and reference texts of ``examples``.

    The template is ``chat_template`` when given, else the one of
    ``evaluation`` (the training data's), else the tokenizer's own.
    """
    if chat_template is None and evaluation is not None:
        chat_template = evaluation.chat_template
    shots = few_shot_messages(few_shot)
    prompts, references = [], []
    for example in examples:
        messages, reference = split_example(example)
        prompts.append(render_prompt(tokenizer, with_few_shot(messages, shots), chat_template,
                                     tools=example.get("tools")))
        references.append(reference)
    return prompts, references


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def model_device(model):
    return next(model.parameters()).device


def stop_token_ids(model, tokenizer) -> list:
    """The token ids that end a generation: the tokenizer's end-of-sequence token and those of the model's
    generation config (one id or a list), sorted."""
    stops = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops |= set(configured if isinstance(configured, (list, tuple)) else [configured])
    stops.discard(None)
    return sorted(stops)


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 64, batch_size: int = 8) -> list:
    """Greedy continuations of ``prompts`` (texts), generated in left-padded batches.

    Special tokens are removed from the outputs and surrounding whitespace is
    stripped; an output cut at ``max_new_tokens`` in the middle of a
    multi-byte character loses the partial character (:func:`decode_outputs`).
    The model is put in eval mode for the call and restored after.
    """
    import torch
    from transformers import GenerationConfig

    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    eos = set(stop_token_ids(model, tokenizer))
    settings = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos) or None)
    device = model_device(model)
    outputs: list = []
    padding_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(list(prompts[start:start + batch_size]), add_special_tokens=False,
                                  padding=True, return_tensors="pt").to(device)
                generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           generation_config=settings)
                new_tokens = generated[:, batch["input_ids"].shape[1]:]
                outputs += decode_outputs(tokenizer, new_tokens.tolist(), eos | {tokenizer.pad_token_id})
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs


#: what a byte-level tokenizer decodes an incomplete UTF-8 sequence to
REPLACEMENT_CHARACTER = "\ufffd"


def decode_outputs(tokenizer, sequences: Sequence[Sequence[int]], stop_ids: Iterable) -> list:
    """Decoded, stripped texts of generated token ``sequences``.

    A sequence that ends in none of ``stop_ids`` (end-of-turn or padding: the
    generation was cut by ``max_new_tokens``) may end inside a multi-byte
    character, which a byte-level tokenizer decodes to U+FFFD: those trailing
    replacement characters are removed.  One inside the text, or at the end
    of a sequence that stopped by itself, is what the model wrote and stays.
    """
    stops = {i for i in stop_ids if i is not None}
    texts = tokenizer.batch_decode(list(sequences), skip_special_tokens=True)
    outputs = []
    for ids, text in zip(sequences, texts):
        text = text.strip()
        if len(ids) and ids[-1] not in stops:
            text = text.rstrip(REPLACEMENT_CHARACTER).rstrip()
        outputs.append(text)
    return outputs


def generate_predictions(model, tokenizer, examples: Sequence[dict], *, max_new_tokens: int = 64,
                         batch_size: int = 8, few_shot: Iterable = (), set_name: str = "val",
                         evaluation: Optional[EvaluationPass] = None) -> list:
    """Rows ``{source, prompt, message, reference, output}`` for ``examples``, generated once per evaluation
    pass (``message``: the user's last turn, :func:`user_message`).

    With ``evaluation`` (the pass the host gave the evaluator) prompts use its
    chat template and the rows are cached in it by (set name, rendered
    prompts, ``max_new_tokens``): a second generation evaluator with the same
    settings gets the same rows without generating again, and the rows go to
    ``predictions.jsonl``.  Without it nothing is cached or kept.

    In a multi-process run (an initialized process group) with ``evaluation``
    given, the batches of prompts are shared out across the ranks and the
    outputs gathered on every rank (:func:`tuneforge.evaluation.map_batches`):
    every rank must call it, and every rank gets all rows.
    """
    prompts, references = prompts_and_references(tokenizer, examples, few_shot, evaluation=evaluation)
    given = evaluation is not None and (evaluation.given_outputs is not None or evaluation.given_answers is not None)
    if given:
        evaluation.given_reads += 1
    key = (set_name, "generation", (tuple(prompts), int(max_new_tokens)))
    if evaluation is not None and key in evaluation.predictions:
        return evaluation.predictions[key]
    started = time.perf_counter()
    batch_rates: list = []  # seconds per prompt of each batch this process generated: the timing's spread
    if given:
        outputs = [_given_output(evaluation, ex) for ex in examples]
    else:
        from tuneforge.evaluation.sharding import map_batches

        def timed(part):
            batch_started = time.perf_counter()
            texts = generate(model, tokenizer, part, max_new_tokens=max_new_tokens, batch_size=batch_size)
            batch_rates.append((time.perf_counter() - batch_started) / max(len(part), 1))
            return texts

        # one batch per rank at a time under DDP (the same batches as in one process), gathered in order
        outputs = [text for batch in map_batches(timed, prompts, batch_size, evaluation) for text in batch]
    rows = [{"source": ex.get("source", ""), "prompt": p, "message": user_message(split_example(ex)[0]),
             "reference": r, "output": o} for ex, p, r, o in zip(examples, prompts, references, outputs)]
    if evaluation is not None:
        evaluation.predictions[key] = rows
        timing = evaluation.timings.setdefault(set_name, {"seconds": 0.0, "queries": 0, "batch_s_per_query": []})
        timing["seconds"] += time.perf_counter() - started
        timing["queries"] = max(timing["queries"], len(prompts))
        timing.setdefault("batch_s_per_query", []).extend(batch_rates)
    return rows


def _given_output(evaluation: EvaluationPass, example: dict) -> str:
    """The given answer of ``example``: a baseline's (``given_answers``, by the example object) or a test's
    (``given_outputs``, by source)."""
    if evaluation.given_answers is not None:
        if id(example) not in evaluation.given_answers:
            raise PluginError(f"generate_predictions got example {example.get('source', '?')}, which is not one of "
                              "the examples the evaluator was given; a column without a model answers only those "
                              "(pass them, or a subset of them, as they are)")
        return evaluation.given_answers[id(example)]
    return evaluation.given_outputs[example.get("source", "")]


def record_scores(metric: str, values: Sequence[float], *, weights: Optional[Sequence[float]] = None,
                  evaluation: Optional[EvaluationPass] = None, rows: Optional[Sequence[dict]] = None) -> None:
    """Keep the per-example scores behind ``metric`` (the name ``evaluate`` returns, e.g. ``exact_match``).

    ``values[i]`` scores the i-th example the evaluator was given (one value
    per example), and the returned metric must equal their mean, or with
    ``weights`` (e.g. each example's token count) the weighted mean
    ``sum(w * v) / sum(w)``.  Every value and weight is a finite number (a
    bool, nan or inf is not; 1.0/0.0 for a hit/miss).  The
    host bootstraps confidence intervals from them (and McNemar's test for
    0/1 values); a metric returned without recorded scores (a corpus BLEU)
    simply gets no interval, and scores whose mean does not match the
    returned value are dropped with a warning.  ``rows``: the prediction
    rows the values score (:func:`generate_predictions`' rows, same order):
    each row then gets its score under the reported metric name in
    ``row["scores"]``, so that ``predictions.jsonl`` and the report's notable
    failures show which examples missed; with ``rows`` the values may score
    fewer examples than were given (those rows).  When the evaluator returns,
    the host checks the values and their count (one line naming the plugin,
    the evaluator and the metric:
    :func:`tuneforge.evaluation.runner.checked_example_scores`).  Without a
    pass nothing is kept.
    """
    if evaluation is None:
        return
    values = list(values)
    if weights is not None:
        weights = list(weights)
        if len(weights) != len(values):
            raise ValueError(f"record_scores({metric!r}): {len(values)} values but {len(weights)} weights")
    if rows is not None and len(rows) != len(values):
        raise ValueError(f"record_scores({metric!r}): {len(values)} values but {len(rows)} rows")
    evaluation.scores[metric] = {"values": values, "weights": weights}
    if rows is not None:
        evaluation.scored_rows[metric] = list(rows)


def record_predictions(set_name: str, kind: str, key, rows: list,
                       evaluation: Optional[EvaluationPass] = None) -> None:
    """Keep ``rows`` (``source``, ``prompt``, ``reference``, ``output``) in ``evaluation`` for predictions.jsonl
    (without a pass they are not kept)."""
    if evaluation is not None:
        evaluation.predictions[(set_name, kind, key)] = rows


def merge_predictions(passes: dict) -> list:
    """Side-by-side rows from several passes (``{"base": pass, "tuned": pass}``).

    Rows of the same example (same set, kind and prompts) are joined: each has
    ``set``, ``kind``, ``source``, ``prompt``, ``message``, ``reference``, one
    output column per pass label and, when evaluators recorded them,
    ``scores``: ``{label: {metric: score}}``.
    """
    merged: dict = {}
    for label, one_pass in passes.items():
        if one_pass is None:
            continue
        for (set_name, kind, key), rows in one_pass.predictions.items():
            target = merged.setdefault((set_name, kind, key), [
                {"set": set_name, "kind": kind, "source": r["source"], "prompt": r["prompt"],
                 **({"message": r["message"]} if "message" in r else {}), "reference": r["reference"]}
                for r in rows])
            for out, row in zip(target, rows):
                out[label] = row["output"]
                if row.get("scores"):
                    out.setdefault("scores", {})[label] = dict(row["scores"])
    return [row for rows in merged.values() for row in rows]
