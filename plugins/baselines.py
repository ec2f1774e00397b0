"""Baselines ``few_shot`` and ``retrieval`` (the base model prompted with training examples) and ``majority``.

The first two put k training examples as demonstration turns (user question,
assistant answer) before each held-out example's own turns, after its system
message:

* ``few_shot``: the same k examples for every prompt, drawn at random with the
  run's seed; for a classification set (the answers are a few labels) one of each
  label first, among the labelled examples (``cover_labels``); or, with ``path``,
  the user's own hand-picked demonstrations read from a data file, in file order;
* ``retrieval``: for each held-out prompt the k training examples whose
  questions are most similar to it, ranked by the retriever its ``retriever``
  setting selects (default ``bm25``: BM25 with ``bm25s`` over lowercased words
  and CJK character bigrams, :mod:`tuneforge.plugins.retrievers`); the most
  similar comes last, right before the question (RAG over the training set).
  Queries that matched no training question (every score 0: the order is the
  training set's) are counted in ``baseline_info.retrieval.tie_only_queries``
  and warned about.

``majority`` uses no model: every held-out prompt gets the most common training
answer of a classification set (the chance level; no column for other data).

Demonstrations come only from :func:`tuneforge.evaluation.demonstration_pool`
(training chat examples; never one whose question and answer are a held-out
example's), or from ``few_shot``'s ``path`` (refused when one repeats a held-out
question and answer), and each rewritten example lists their sources under
``demonstrations`` (``predictions.jsonl`` shows them).  The ``rag`` baseline
(:mod:`tuneforge.plugins.rag`) retrieves passages of the user's documents instead.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import tuneforge
from tuneforge.data import normalize, read_records
from tuneforge.errors import DataError
from tuneforge.evaluation import (demonstration_pool, demonstration_turns, examples_by_label, held_out_overlaps,
                                  is_plain_turn, query_text, rank_all, search_terms, with_demonstrations)
from tuneforge.specs import selects
from tuneforge.validation import at_least, check, existing_path

log = logging.getLogger("tuneforge")


@dataclass
class FewShotConfig:
    """The base model with k random training examples (or your own, from ``path``) as demonstrations.

    k: how many demonstrations (null, the default: 4 random training examples, or every record of
        ``path``); fewer when the training set has fewer usable examples.  With ``path``: the first k
        records of the file, or all of them when it holds k or fewer (the log says how many were used).
    cover_labels: auto (the default), true or false.  When the training answers are labels (a
        classification set: tuneforge.evaluation.examples_by_label), the demonstrations are drawn among the
        examples with a label (not rehearsal rows mixed in) and show every label at least once, so k
        grows to the number of labels where it is smaller; the rest of k is drawn at random.  auto does
        so for classification sets, true also insists (an error when the answers are not labels), false
        never does.  Does not apply with ``path`` (its demonstrations are used as written; true is refused).
    path: a local data file of hand-picked demonstrations (the prompt you would ship instead of
        fine-tuning), read as ``data=files`` reads a file (.jsonl, .json, .csv, .parquet, .gz too), its
        records in the layouts the data formats detect (data.columns and data.format do not apply):
        alpaca (instruction, output), chat (messages of plain user/assistant turns ending with the
        answer; system messages left out) or prompt/completion; a preference, KTO, completion or
        prompt-only record is an error naming it.  Used in file order instead of random training
        examples; a record that repeats a held-out question and its answer is refused, one that asks a
        held-out question with another answer is warned about.  The file is hashed with the run's data
        (resume, eval).  null (the default): random training examples.
    """

    k: Optional[int] = None
    cover_labels: Any = "auto"
    path: Optional[str] = None

    #: the demonstrations file is part of the run's data: made absolute, hashed into its identity
    DATA_FILES: ClassVar[tuple] = ("path",)

    def __post_init__(self) -> None:
        check(self, k=at_least(1), cover_labels=[_auto_or_bool, self._labels_with_path],
              path=[existing_path("file"), _demonstrations_problem])

    def _labels_with_path(self, value) -> Optional[str]:
        if value is True and self.path is not None:
            return ("true does not apply with baselines.few_shot.path (its demonstrations are used as written, "
                    "in file order); valid with path: auto or false")
        return None


def _demonstrations_problem(path) -> Optional[str]:
    """Why the records of ``path`` cannot be demonstrations, checked with the config (before the model
    loads); whether one repeats a held-out example is checked when the baseline runs."""
    try:
        read_demonstrations(str(path))
    except DataError as exc:
        return str(exc).removeprefix("baselines.few_shot.path: ")
    return None


#: the number of random training demonstrations when ``k`` is null
DEFAULT_K = 4


def shot_count(config: FewShotConfig) -> int:
    """``config.k``, or :data:`DEFAULT_K` when it is null (the random draw's count)."""
    return DEFAULT_K if config.k is None else int(config.k)


def _auto_or_bool(value) -> Optional[str]:
    if value == "auto" or isinstance(value, bool):
        return None
    return f"must be one of auto, true, false, got {value!r}"


@dataclass
class RetrievalConfig:
    """The base model with the k training examples most similar to each held-out prompt (BM25).

    k: how many retrieved demonstrations per prompt.
    retriever: the retriever ranking training questions: a name (bm25, dense, a plugin's) or a
        mapping with name and its keys, e.g. {name: bm25, k1: 1.2}.
    """

    k: int = 4
    retriever: Any = selects("retriever", "bm25")

    def __post_init__(self) -> None:
        check(self, k=at_least(1))


def _sources(examples) -> list:
    return [ex.get("source", "") for ex in examples]


def rewrite_few_shot(model, tokenizer, train, held_out, config: FewShotConfig, *, seed: int = 0,
                     info: Optional[dict] = None, context=None) -> list:
    """Every held-out example after the same ``k`` demonstrations, drawn from the pool with ``seed`` (one per
    label first for a classification set: ``config.cover_labels``), or the records of ``config.path`` in
    file order (:func:`file_shots`)."""
    if config.path is not None:
        shots = file_shots(config, held_out, info, context)
    else:
        pool = demonstration_pool(train, held_out)
        rng = random.Random(seed)
        shots = labelled_shots(pool, config, rng, info)
        if shots is None:
            shots = rng.sample(pool, min(shot_count(config), len(pool)))
            if info is not None:
                info["demonstrations"] = len(shots)
    return [dict(with_demonstrations(example, shots), demonstrations=_sources(shots)) for example in held_out]


def labelled_shots(pool: list, config: FewShotConfig, rng: random.Random, info: Optional[dict] = None):
    """Demonstrations that show every label of a classification pool (one drawn per label, in label order,
    then the rest of ``k`` at random among the labelled examples, all shuffled), or None when the pool's
    answers are not labels (or ``cover_labels`` is false)."""
    if config.cover_labels is False:
        return None
    by_label = examples_by_label(pool)
    if by_label is None:
        if config.cover_labels is True:
            raise tuneforge.ConfigError("baselines.few_shot.cover_labels=true, but the training answers are not "
                                        "labels (a few answers repeated over most examples); set it to auto or false")
        return None
    shots = [rng.choice(examples) for examples in by_label.values()]
    chosen = {id(example) for example in shots}
    rest = [example for examples in by_label.values() for example in examples if id(example) not in chosen]
    shots += rng.sample(rest, min(max(shot_count(config) - len(shots), 0), len(rest)))
    rng.shuffle(shots)
    if info is not None:
        info.update(labels=len(by_label), demonstrations=len(shots))
    if len(by_label) > shot_count(config):
        log.info("few_shot: the training answers are %d labels, more than k=%d: one demonstration of each",
                 len(by_label), shot_count(config))
    return shots


#: what a record of ``baselines.few_shot.path`` may be
VALID_DEMONSTRATIONS = ("valid: alpaca (instruction, output), chat (plain user/assistant turns ending with the "
                        "assistant's answer) or prompt/completion records")
_NOT_A_DEMONSTRATION = {
    "preference": "a preference pair (chosen and rejected answers)",
    "kto": "a KTO record (one answer marked desirable or not)",
    "completion": "a completion record (text without a question and answer)",
    "input_output": "an input_output record (segments without a question and answer)",
    "prompt": "a prompt without an answer",
}


def _demonstration_problem(format_name: str, turns: list) -> Optional[str]:
    """Why a normalized record cannot be a demonstration (None when it can)."""
    if format_name in _NOT_A_DEMONSTRATION:
        return _NOT_A_DEMONSTRATION[format_name]
    if not all(is_plain_turn(turn) for turn in turns):
        return "a conversation with tool calls or tool results"
    if not turns or turns[-1]["role"] != "assistant" or turns[0]["role"] != "user":
        return "a conversation that does not go from a user turn to the assistant's answer"
    return None


def read_demonstrations(path: str) -> list:
    """The records of ``path`` as demonstration examples, in file order: ``messages`` (normalized as the
    training records are: :func:`tuneforge.data.normalize`), ``source`` (``file:line``), ``format`` and
    ``record``, the fields of a training example that demonstrations use.  A missing or empty file, or a
    record that cannot be a demonstration, is a one-line :class:`DataError` naming the file and record."""
    where = "baselines.few_shot.path"
    if not Path(path).is_file():
        raise DataError(f"{where}: no such file: {path}; give a data file of demonstration records")
    try:
        records = read_records(path)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    if not records:
        raise DataError(f"{where}: {path} holds no records; give at least one demonstration record "
                        f"({VALID_DEMONSTRATIONS})")
    examples = []
    for record in records:
        try:
            sample = normalize(record)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        messages = [dict(m) for m in (sample.messages or []) + (sample.completion or [])]
        problem = _demonstration_problem(sample.format, demonstration_turns({"messages": messages}))
        if problem:
            raise DataError(f"{where}: {record.source} is {problem}, not a demonstration; {VALID_DEMONSTRATIONS}")
        examples.append({"messages": messages, "source": record.source, "format": sample.format,
                         "record": record.data})
    return examples


def check_demonstration_leaks(shots: list, held_out, context=None) -> list:
    """Refuse a demonstration holding a held-out example's final question and answer (the baseline
    would see the answer: a :class:`DataError` naming both); warn about one asking a held-out question
    with another answer (:func:`tuneforge.evaluation.held_out_overlaps`).  Returns the warned
    ``[(demonstration source, held-out source)]``."""
    answered, warned = held_out_overlaps(shots, held_out)
    if answered:
        shot, leaked = answered[0]
        raise DataError(f"baselines.few_shot.path: {shot} is held-out example {leaked} (the same question and "
                        "answer): the baseline would see the answer; remove it from the file")
    if warned and (context is None or context.is_main):
        log.warning("baseline few_shot: %d demonstration(s) of baselines.few_shot.path ask a held-out question "
                    "(first: %s asks the question of held-out example %s, with another answer): the prompt shows "
                    "that question answered", len(warned), *warned[0])
    return warned


def file_shots(config: FewShotConfig, held_out, info: Optional[dict] = None, context=None) -> list:
    """The demonstrations of ``config.path``: all its records in file order, or the first ``k`` when
    ``k`` is set below their count (logged), checked against the held-out examples
    (:func:`check_demonstration_leaks`)."""
    demonstrations = read_demonstrations(config.path)
    shots = demonstrations if config.k is None else demonstrations[: int(config.k)]
    warned = check_demonstration_leaks(shots, held_out, context)
    if info is not None:
        info.update(path=str(config.path), file_records=len(demonstrations), demonstrations=len(shots),
                    held_out_questions=len(warned))
    if context is None or context.is_main:
        if len(shots) < len(demonstrations):
            log.info("baseline few_shot: the first %d of the %d demonstrations of %s (k=%d)", len(shots),
                     len(demonstrations), config.path, int(config.k))
        else:
            log.info("baseline few_shot: all %d demonstrations of %s, in file order", len(shots), config.path)
    return shots


def describe_few_shot(config: FewShotConfig, info: Optional[dict] = None) -> str:
    """The column label: ``few_shot, k=4`` for random training examples (the number shown: ``k=5`` where one
    demonstration of each of 5 labels was drawn), ``few_shot, 5 from demos.jsonl`` for the demonstrations of
    ``path``.  ``info``: what the run reported (its ``demonstrations``), when there was a run."""
    shown = (info or {}).get("demonstrations")
    if config.path is None:
        return f"few_shot, k={shown or shot_count(config)}"
    if shown:
        return f"few_shot, {shown} from {Path(config.path).name}"
    try:
        count = len(read_records(config.path))
    except DataError:
        return f"few_shot, from {Path(config.path).name}"
    return f"few_shot, {count if config.k is None else min(count, int(config.k))} from {Path(config.path).name}"


def words(text: str) -> list:
    """The terms BM25 counts (:func:`tuneforge.evaluation.retrieval.search_terms`): lowercased
    words, and character unigrams and bigrams of Chinese, Japanese and Korean text."""
    return search_terms(text)


def default_retriever(setting, build_retriever=None):
    """The retriever ``setting`` selects: built by the host's ``build_retriever`` in a run; the
    built-in ``bm25`` with its defaults when called directly (no host)."""
    if build_retriever is not None:
        return build_retriever(setting)
    from tuneforge.plugins.retrievers import BM25Config, BM25Retriever

    if setting not in ("bm25", None):
        raise tuneforge.ConfigError(f"retriever {setting!r} needs the host's build_retriever (run it in tuneforge)")
    return BM25Retriever(BM25Config())


def rank_similar(pool, queries, k: int, retriever=None) -> list:
    """For each query text, the indices into ``pool`` of its ``k`` most similar examples, most
    similar first (``retriever``, default BM25 over :func:`words` of each example's
    :func:`query_text`; ties keep the pool's order)."""
    ranked, _ties = rank_all(retriever or default_retriever("bm25"), [query_text(example) for example in pool],
                             list(queries), k)
    return ranked


def report_ties(name: str, ties: list, queries: int, what: str, info: Optional[dict], context=None) -> None:
    """Count the queries that retrieval could only tie-break into ``info`` (``tie_only_queries``,
    ``queries``) and warn when there are any."""
    if info is not None:
        info.update(tie_only_queries=len(ties), queries=queries)
    if ties and (context is None or context.is_main):
        log.warning("baseline %s: %d of %d held-out prompts matched no %s (every score 0): what they got is "
                    "the first in order, not the most similar", name, len(ties), queries, what)


def rewrite_retrieval(model, tokenizer, train, held_out, config: RetrievalConfig, *, info: Optional[dict] = None,
                      build_retriever=None, context=None) -> list:
    """Every held-out example after its ``k`` most similar training examples, the most similar last."""
    pool = demonstration_pool(train, held_out)
    queries = [query_text(example) for example in held_out]
    ranked, ties = rank_all(default_retriever(config.retriever, build_retriever),
                            [query_text(example) for example in pool], queries, config.k)
    if pool:
        report_ties("retrieval", ties, len(queries), "training question", info, context)
    rewritten = []
    for example, order in zip(held_out, ranked):
        shots = [pool[i] for i in reversed(order)]
        rewritten.append(dict(with_demonstrations(example, shots), demonstrations=_sources(shots)))
    return rewritten


@dataclass
class MajorityConfig:
    """The most common training answer given to every held-out prompt, without a model: the chance level
    a classifier must beat (a tuned model can beat the zero-shot base by the answer format alone).

    max_labels: the most distinct answers that still count as labels; with more, or when the answers
        are not labels (a few answers repeated over most training examples), there is no column.
    """

    max_labels: int = 10

    def __post_init__(self) -> None:
        check(self, max_labels=at_least(2))


def answer_majority(train, held_out, config: MajorityConfig, *, info: Optional[dict] = None) -> Optional[list]:
    """The most common training label for every held-out example (ties: the first label in sorted order), or
    None when the training answers are not labels (``info["skipped"]`` says so)."""
    info = info if info is not None else {}
    by_label = examples_by_label(list(train), config.max_labels)
    if by_label is None:
        info["skipped"] = (f"the training answers are not labels (at most {config.max_labels} answers repeated "
                           "over most examples), so there is no most common answer to compare with")
        return None
    answer = max(by_label, key=lambda label: len(by_label[label]))  # sorted labels: the first of equal counts
    labelled = sum(len(examples) for examples in by_label.values())
    info.update(answer=answer, share=len(by_label[answer]) / labelled, labels=len(by_label))
    return [answer] * len(held_out)


@tuneforge.hookimpl
def tuneforge_baselines():
    return [
        tuneforge.BaselineSpec("few_shot", FewShotConfig,
                               "k random training examples (or your own, from path) as demonstrations",
                               rewrite=rewrite_few_shot, describe=describe_few_shot),
        tuneforge.BaselineSpec("retrieval", RetrievalConfig,
                               "the k most similar training examples (BM25) as demonstrations",
                               rewrite=rewrite_retrieval, describe=lambda config: f"retrieval, k={config.k}"),
        tuneforge.BaselineSpec("majority", MajorityConfig,
                               "the most common training answer for every prompt, no model (classification sets)",
                               answer=answer_majority, describe=lambda config: "most common answer (no model)"),
    ]
