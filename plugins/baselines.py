"""Prompting baselines ``few_shot`` and ``retrieval``: the base model prompted with training examples.

Both put k training examples as demonstration turns (user question, assistant
answer) before each held-out example's own turns, after its system message:

* ``few_shot``: the same k examples for every prompt, drawn at random with the
  run's seed; for a classification set (the answers are a few labels) one of each
  label first, among the labelled examples (``cover_labels``);
* ``retrieval``: for each held-out prompt the k training examples whose
  questions are most similar to it, ranked by the retriever its ``retriever``
  setting selects (default ``bm25``: BM25 with ``bm25s`` over lowercased words
  and CJK character bigrams, :mod:`tuneforge.plugins.retrievers`); the most
  similar comes last, right before the question (RAG over the training set).
  Queries that matched no training question (every score 0: the order is the
  training set's) are counted in ``baseline_info.retrieval.tie_only_queries``
  and warned about.

Demonstrations come only from :func:`tuneforge.evaluation.demonstration_pool`
(training chat examples; never one whose question and answer are a held-out
example's), and each rewritten example lists their sources under
``demonstrations`` (``predictions.jsonl`` shows them).  The ``rag`` baseline
(:mod:`tuneforge.plugins.rag`) retrieves passages of the user's documents instead.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Optional

import tuneforge
from tuneforge.evaluation import (demonstration_pool, examples_by_label, query_text, rank_all, search_terms,
                                  with_demonstrations)
from tuneforge.specs import selects
from tuneforge.validation import at_least, check

log = logging.getLogger("tuneforge")


@dataclass
class FewShotConfig:
    """The base model with k random training examples as demonstrations.

    k: how many demonstrations (fewer when the training set has fewer usable examples).
    cover_labels: auto (the default), true or false.  When the training answers are labels (a
        classification set: tuneforge.evaluation.examples_by_label), the demonstrations are drawn among the
        examples with a label (not rehearsal rows mixed in) and show every label at least once, so k
        grows to the number of labels where it is smaller; the rest of k is drawn at random.  auto does
        so for classification sets, true also insists (an error when the answers are not labels), false
        never does.
    """

    k: int = 4
    cover_labels: Any = "auto"

    def __post_init__(self) -> None:
        check(self, k=at_least(1), cover_labels=_auto_or_bool)


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
                     info: Optional[dict] = None) -> list:
    """Every held-out example after the same ``k`` demonstrations, drawn from the pool with ``seed`` (one per
    label first for a classification set: ``config.cover_labels``)."""
    pool = demonstration_pool(train, held_out)
    rng = random.Random(seed)
    shots = labelled_shots(pool, config, rng, info)
    if shots is None:
        shots = rng.sample(pool, min(int(config.k), len(pool)))
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
    shots += rng.sample(rest, min(max(int(config.k) - len(shots), 0), len(rest)))
    rng.shuffle(shots)
    if info is not None:
        info.update(labels=len(by_label), demonstrations=len(shots))
    if len(by_label) > int(config.k):
        log.info("few_shot: the training answers are %d labels, more than k=%d: one demonstration of each",
                 len(by_label), int(config.k))
    return shots


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


@tuneforge.hookimpl
def tuneforge_baselines():
    return [
        tuneforge.BaselineSpec("few_shot", FewShotConfig, "k random training examples as demonstrations",
                               rewrite=rewrite_few_shot, describe=lambda config: f"few_shot, k={config.k}"),
        tuneforge.BaselineSpec("retrieval", RetrievalConfig,
                               "the k most similar training examples (BM25) as demonstrations",
                               rewrite=rewrite_retrieval, describe=lambda config: f"retrieval, k={config.k}"),
    ]
