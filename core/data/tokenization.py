"""Token ids and masked labels: samples tokenized for training.

Conversations are rendered with :mod:`tuneforge.data.chat_templates`.  Labels
are ``IGNORE_INDEX`` (-100) outside assistant turns; every assistant turn (and
the end-of-turn marker the template writes after it) is trained, tool-call
turns included, and an EOS token closes the final target when the template
does not write one.  Tool results and the tools list are never trained.
Completion text is trained whole.  Axolotl's template-free input_output
segments are tokenized one by one, raw, and trained where labelled true.  Over-long examples are truncated or dropped
at ``data.max_length`` (counted, and summarised in one log line); every text is
cut before tokenization so a huge record costs no more than a long one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Collection, Optional, Sequence

from tuneforge.data.chat_templates import ALPACA_PROMPT, assistant_spans, render_prompt, resolve_chat_template
from tuneforge.data.messages import UNTRAINED_MARKS
from tuneforge.data.samples import Sample, normalize_records, record_places
from tuneforge.data.sources import Record
from tuneforge.errors import DataError

log = logging.getLogger("tuneforge")

IGNORE_INDEX = -100


def _plain_spans(tokenizer, prompt: list[dict], response: str) -> tuple[str, list]:
    prefix = ALPACA_PROMPT.format(instruction="\n\n".join(m["content"] for m in prompt))
    target = response + (tokenizer.eos_token or "")
    return prefix + target, [(len(prefix), len(prefix) + len(target))]


def _label_spans(tokenizer, text: str, spans: list, *, special_tokens: bool,
                 train_on_inputs: bool) -> tuple[list, list, list]:
    """Token ids of ``text`` and labels that are ``IGNORE_INDEX`` outside ``spans``.

    Also returns the ids of the tokens in the last span.  Fast tokenizers map
    tokens to characters with offsets; slow ones are tokenized span by span.
    """
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=special_tokens, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
        inside = [end > start and any(start < b and end > a for a, b in spans) for start, end in offsets]
        last = [t for t, (start, end) in zip(ids, offsets)
                if spans and end > start and start < spans[-1][1] and end > spans[-1][0]]
    else:
        ids, inside, last, pieces, position = [], [], [], [], 0
        for a, b in spans:
            pieces += [(text[position:a], False), (text[a:b], True)]
            position = b
        pieces.append((text[position:], False))
        for piece, trained in pieces:
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                inside += [trained] * len(piece_ids)
                last = piece_ids if trained else last
    labels = [t if (flag or train_on_inputs) else IGNORE_INDEX for t, flag in zip(ids, inside)]
    return ids, labels, last


def tokenize_messages(tokenizer, messages: list[dict], *, chat_template: Optional[str] = None,
                      train_on_inputs: bool = False, train_from: int = 0, plain: bool = False,
                      tools: Optional[list] = None, skip: Collection[int] = ()) -> dict:
    """Tokenize a conversation; labels are ``IGNORE_INDEX`` outside the trained assistant turns.

    ``chat_template`` is the template to use instead of the tokenizer's
    (needed when the tokenizer has none).
    ``train_from`` skips assistant turns before that message index (a
    preference prompt); ``skip`` names the indices of assistant turns that are
    not trained (marked ``weight: 0`` / ``train: false``).  ``plain=True`` allows single-turn conversations to use
    :data:`ALPACA_PROMPT` when no template exists; otherwise that is an error.
    ``tools`` are the conversation's tool schemas (see :func:`assistant_spans`).
    An end-of-sequence token is appended when the final assistant turn is
    trained and does not already contain one, so every target is closed.
    """
    template = resolve_chat_template(tokenizer, chat_template)
    if template:
        text, spans = assistant_spans(tokenizer, messages, template, train_from, tools, skip)
        special = False
    elif plain:
        text, spans = _plain_spans(tokenizer, messages[:-1], messages[-1]["content"])
        special = True
    else:
        raise DataError("the tokenizer has no chat template to render this conversation; set "
                        "data.chat_template (a Jinja template, or 'chatml')")
    ids, labels, last_turn = _label_spans(tokenizer, text, spans, special_tokens=special,
                                          train_on_inputs=train_on_inputs)
    eos = tokenizer.eos_token_id
    if eos is not None and messages[-1]["role"] == "assistant" and len(messages) - 1 not in skip \
            and eos not in last_turn:
        ids.append(eos)
        labels.append(eos)
    return {"input_ids": ids, "labels": labels}


def tokenize_text(tokenizer, text: str) -> dict:
    """Tokenize completion text (with the tokenizer's own special tokens) and close it with EOS; all trained."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return {"input_ids": ids, "labels": list(ids)}


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts its encodings with its BOS token (``add_special_tokens=True``)."""
    bos = tokenizer.bos_token_id
    return bos is not None and list(tokenizer("a", add_special_tokens=True)["input_ids"][:1]) == [bos] \
        and list(tokenizer("a", add_special_tokens=False)["input_ids"][:1]) != [bos]


def tokenize_segments(tokenizer, segments: Sequence[tuple], *, train_on_inputs: bool = False) -> dict:
    """Tokenize Axolotl input_output ``(trained, text)`` segments as Axolotl does: each segment on its own,
    raw (no special tokens added; special-token text such as ``</s>`` in a segment is that token), its
    tokens trained when the segment is (every one with ``train_on_inputs``).  No EOS is appended: write it
    in the text.  A tokenizer that starts encodings with BOS gets one BOS first (not trained), unless the
    first segment already starts with it."""
    ids, labels = [], []
    for trained, text in segments:
        piece = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        ids += piece
        labels += piece if (trained or train_on_inputs) else [IGNORE_INDEX] * len(piece)
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids.insert(0, tokenizer.bos_token_id)
        labels.insert(0, IGNORE_INDEX)
    return {"input_ids": ids, "labels": labels}


def tokenize_sample(tokenizer, sample: Sample, *, chat_template: Optional[str] = None,
                    train_on_inputs: bool = False) -> dict:
    """The tokenized fields of one sample (without ``record``/``source``).

    prompt: ``input_ids`` of the rendered prompt with the generation prompt (as
    generation sees it, :func:`~tuneforge.data.chat_templates.render_prompt`),
    ``labels`` all ``IGNORE_INDEX`` (nothing to learn: an online objective
    generates the answer), ``messages``.

    alpaca/chat: ``input_ids``, ``labels``, ``messages``.  completion:
    ``input_ids``, ``labels`` (all trained), ``text``.  input_output: ``input_ids``, ``labels`` (the
    segments labelled true trained, :func:`tokenize_segments`), ``text`` (the segments joined).  preference:
    ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``,
    ``rejected_labels`` (prompt tokens always masked), plus ``input_ids`` /
    ``labels`` equal to the chosen ones (so SFT losses and perplexity run on
    the chosen answer), ``messages`` = prompt + chosen response and ``rejected_messages`` = prompt +
    rejected response.  kto:
    ``input_ids``, ``labels`` (the answer trained, the prompt masked),
    ``kto_label`` (``[1]`` desirable, ``[0]`` undesirable) and ``messages`` =
    prompt + answer; prompt_completion: the same without ``kto_label`` (and
    ``train_on_inputs`` trains the prompt too).  Samples
    with tools also get ``tools`` (the schemas, for rendering prompts later).
    Assistant turns marked not to train (``sample.untrained``) stay masked;
    with ``train_on_inputs``, which trains every token, they are an error.
    """
    if sample.untrained and train_on_inputs:
        raise DataError(f"the record marks assistant turns not to train ({UNTRAINED_MARKS}), but "
                        "data.train_on_inputs=true trains every token; remove the marks or set "
                        "data.train_on_inputs=false")
    if sample.format == "completion":
        return dict(tokenize_text(tokenizer, sample.text), text=sample.text)
    if sample.format == "input_output":
        return dict(tokenize_segments(tokenizer, sample.segments, train_on_inputs=train_on_inputs),
                    text=sample.text)
    extra = {"tools": sample.tools} if sample.tools else {}
    if sample.format == "prompt":
        if not sample.plain and not resolve_chat_template(tokenizer, chat_template):
            raise DataError("the tokenizer has no chat template to render this conversation; set "
                            "data.chat_template (a Jinja template, or 'chatml')")
        ids = list(tokenizer(render_prompt(tokenizer, sample.messages, chat_template, tools=sample.tools),
                             add_special_tokens=False)["input_ids"])
        return dict(input_ids=ids, labels=[IGNORE_INDEX] * len(ids), messages=sample.messages, **extra)
    if sample.format == "preference":
        out = {}
        for side, response in (("chosen", sample.chosen), ("rejected", sample.rejected)):
            encoded = tokenize_messages(tokenizer, sample.messages + response, chat_template=chat_template,
                                        train_from=len(sample.messages), plain=sample.plain, tools=sample.tools)
            out[f"{side}_input_ids"], out[f"{side}_labels"] = encoded["input_ids"], encoded["labels"]
        out["input_ids"], out["labels"] = list(out["chosen_input_ids"]), list(out["chosen_labels"])
        out["messages"] = sample.messages + sample.chosen
        out["rejected_messages"] = sample.messages + sample.rejected
        return dict(out, **extra)
    if sample.format in ("kto", "prompt_completion"):
        encoded = tokenize_messages(tokenizer, sample.messages + sample.completion, chat_template=chat_template,
                                    train_on_inputs=train_on_inputs and sample.format != "kto",
                                    train_from=len(sample.messages), plain=sample.plain, tools=sample.tools,
                                    skip=sample.untrained)
        mark = {"kto_label": [int(sample.desirable)]} if sample.format == "kto" else {}
        return dict(encoded, **mark, messages=sample.messages + sample.completion, **extra)
    encoded = tokenize_messages(tokenizer, sample.messages, chat_template=chat_template,
                                train_on_inputs=train_on_inputs, plain=sample.plain, tools=sample.tools,
                                skip=sample.untrained)
    return dict(encoded, messages=sample.messages, **extra)


def _sequence_keys(example: dict) -> list:
    return [k for k in example if k.endswith(("input_ids", "labels"))]



def check_length_options(max_length: Any, truncation: Any) -> None:
    """``data.max_length`` is an integer >= 2 and ``data.truncation`` is ``truncate`` or ``drop``."""
    if truncation not in ("truncate", "drop"):
        raise DataError(f"data.truncation is '{truncation}'; valid: truncate, drop")
    if not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"data.max_length is {max_length!r}; it must be an integer of at least 2")


def longest_token_chars(tokenizer) -> int:
    """The most characters one token of ``tokenizer`` stands for (at most the length of its longest
    vocabulary entry: byte-level and SentencePiece tokens never decode to more characters than they spell)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return 64
    return max((len(token) for token in vocab), default=1) or 1


def cut_length(tokenizer, max_length: int) -> int:
    """Characters a text field may keep before tokenization without changing the first ``max_length``
    tokens: ``max_length + 1`` tokens of the tokenizer's longest kind.  A longer text still makes more
    than ``max_length`` tokens, so it is truncated or dropped (and counted) exactly as the whole text
    would be, while the tokenizer never sees more than this (a 50 MB record stays a few kB of work)."""
    return (int(max_length) + 1) * longest_token_chars(tokenizer)


def cut_sample(sample: Sample, limit: int) -> Sample:
    """``sample`` with every message content and the completion text cut to ``limit`` characters, and the
    input_output segments to ``limit`` characters together (the same object when nothing is longer)."""
    def cut_messages(messages):
        if not messages or all(len(m.get("content") or "") <= limit for m in messages):
            return messages
        return [dict(m, content=m["content"][:limit]) if isinstance(m.get("content"), str) else m
                for m in messages]

    def cut_segments(segments):
        if not segments or sum(len(text) for _, text in segments) <= limit:
            return segments
        kept, left = [], limit
        for trained, text in segments:
            kept.append((trained, text[:left]))
            left -= len(kept[-1][1])
            if not left:
                break
        return kept

    fields = {"messages": cut_messages(sample.messages), "chosen": cut_messages(sample.chosen),
              "rejected": cut_messages(sample.rejected), "completion": cut_messages(sample.completion),
              "text": sample.text[:limit] if isinstance(sample.text, str) and len(sample.text) > limit else sample.text,
              "segments": cut_segments(sample.segments)}
    if all(fields[key] is getattr(sample, key) for key in fields):
        return sample
    return dataclasses.replace(sample, **fields)


def tokenize_samples(pairs: Sequence[tuple], tokenizer, *, max_length: int = 1024, truncation: str = "truncate",
                     chat_template: Optional[str] = None, train_on_inputs: bool = False) -> tuple[list, dict, list]:
    """Tokenize ``(record, sample)`` pairs in order; returns ``(results, counts, dropped)``.

    Every text is first cut to :func:`cut_length` characters, which leaves the
    first ``max_length`` tokens as they are: memory stays bounded whatever
    the record's size.

    ``results`` is aligned with ``pairs``: an example (see
    :func:`tokenize_records`) or None where the example was dropped;
    ``dropped`` lists ``[source, reason]`` per dropped example, the reason
    ``"too long"`` (``truncation="drop"``) or ``"prompt fills max_length"`` (a
    truncated example with nothing left to train).
    """
    check_length_options(max_length, truncation)
    limit = cut_length(tokenizer, max_length)
    results, formats, truncated, dropped = [], {}, 0, []
    for record, sample in pairs:
        try:
            short = cut_sample(sample, limit)
            example = tokenize_sample(tokenizer, short, chat_template=chat_template,
                                      train_on_inputs=train_on_inputs)
            if short is not sample:  # the tokens come from the cut text; the example keeps the record's own
                example.update({key: value for key, value in (
                    ("messages", sample.messages + (sample.chosen or sample.completion)
                     if sample.format in ("preference", "kto", "prompt_completion") else sample.messages),
                    ("rejected_messages", sample.messages + (sample.rejected or [])),
                    ("text", sample.text)) if key in example})
        except DataError as exc:
            raise DataError(f"{record.source}: {exc}") from None
        keys = _sequence_keys(example)
        was_cut = False
        if any(len(example[k]) > max_length for k in keys):
            if truncation == "drop" or sample.format == "prompt":  # a cut prompt loses its generation prompt
                dropped.append([record.source, "too long"])
                results.append(None)
                continue
            was_cut = True
            example.update({k: example[k][:max_length] for k in keys})
        untrained = [k for k in keys if k.endswith("labels") and all(t == IGNORE_INDEX for t in example[k])]
        if untrained and sample.format == "prompt":
            untrained = []  # a prompt trains nothing by itself
        if untrained and was_cut:
            # the prompt alone fills max_length: nothing left to learn from, so leave it out (counted)
            dropped.append([record.source, "prompt fills max_length"])
            results.append(None)
            continue
        if untrained:
            raise DataError(f"{record.source}: no token of '{untrained[0]}' is trained (the chat template "
                            "renders no assistant text to learn from)")
        truncated += was_cut
        example.update(record=record.data, source=record.source, format=sample.format)
        formats[sample.format] = formats.get(sample.format, 0) + 1
        results.append(example)
    return results, {"truncated": truncated, "dropped": len(dropped), "formats": formats}, dropped


def log_length_summary(counts: dict, dropped: Sequence, max_length: int, truncation: str) -> None:
    """ONE log line for the truncated and dropped examples: their counts and the first dropped locations."""
    if not counts["truncated"] and not counts["dropped"]:
        return
    filled = sum(reason == "prompt fills max_length" for _, reason in dropped)
    why = f"; {filled} of them because the prompt alone fills the limit" if filled else ""
    where = f": {record_places([source for source, _ in dropped])}" if dropped else ""
    log.warning("data: %d example(s) truncated and %d dropped at data.max_length=%d (data.truncation=%s%s)%s",
                counts["truncated"], counts["dropped"], max_length, truncation, why, where)


def tokenize_records(records: Sequence[Record], tokenizer, *, fmt: str = "auto", max_length: int = 1024,
                     truncation: str = "truncate", chat_template: Optional[str] = None,
                     train_on_inputs: bool = False, columns: Optional[dict] = None,
                     roles: Optional[dict] = None) -> tuple[list, dict]:
    """Tokenize records; returns ``(examples, counts)``.

    Each example holds its tokenized fields (see :func:`tokenize_sample`) plus
    ``record`` (the raw dict), ``source`` (``file:line``) and ``format``.
    Records are normalized first, in order (:func:`normalize_records`, with ``columns`` and ``roles``:
    ``data.columns`` and ``data.roles``), so the first bad record is the one reported.
    ``truncation="truncate"`` cuts over-long sequences at ``max_length``;
    ``"drop"`` leaves the example out.  Both are counted in ``counts``
    (``truncated``, ``dropped``, and ``formats``: examples per format) and
    summarised in one log line naming the first dropped records.  A
    truncated example whose prompt fills ``max_length`` has nothing left to
    train on and is dropped (counted).  An
    example with no trained token without truncation, or a split mixing
    preference and other records, is an error naming the record.
    """
    check_length_options(max_length, truncation)
    samples = normalize_records(records, fmt, columns, roles)
    results, counts, dropped = tokenize_samples(list(zip(records, samples)), tokenizer, max_length=max_length,
                                                truncation=truncation, chat_template=chat_template,
                                                train_on_inputs=train_on_inputs)
    log_length_summary(counts, dropped, max_length, truncation)
    return [example for example in results if example is not None], counts
