"""Prompting baselines ``few_shot`` and ``retrieval``: the base model prompted with training examples.

Both put k training examples as demonstration turns (user question, assistant
answer) before each held-out example's own turns, after its system message:

* ``few_shot``: the same k examples for every prompt, drawn at random with the
  run's seed;
* ``retrieval``: for each held-out prompt the k training examples whose
  questions are most similar to it, ranked by BM25 (``rank-bm25``) over
  lowercased word tokens; the most similar comes last, right before the
  question (RAG over the training set).

Demonstrations come only from :func:`tuneforge.evaluation.demonstration_pool`
(training chat examples; never one whose question and answer are a held-out
example's), and each rewritten example lists their sources under
``demonstrations`` (``predictions.jsonl`` shows them).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import tuneforge
from tuneforge.evaluation import demonstration_pool, query_text, with_demonstrations
from tuneforge.validation import at_least, check

_WORD = re.compile(r"\w+")


@dataclass
class FewShotConfig:
    """The base model with k random training examples as demonstrations.

    k: how many demonstrations (fewer when the training set has fewer usable examples).
    """

    k: int = 4

    def __post_init__(self) -> None:
        check(self, k=at_least(1))


@dataclass
class RetrievalConfig:
    """The base model with the k training examples most similar to each held-out prompt (BM25).

    k: how many retrieved demonstrations per prompt.
    """

    k: int = 4

    def __post_init__(self) -> None:
        check(self, k=at_least(1))


def _sources(examples) -> list:
    return [ex.get("source", "") for ex in examples]


def rewrite_few_shot(model, tokenizer, train, held_out, config: FewShotConfig, *, seed: int = 0) -> list:
    """Every held-out example after the same ``k`` demonstrations, drawn from the pool with ``seed``."""
    pool = demonstration_pool(train, held_out)
    shots = random.Random(seed).sample(pool, min(int(config.k), len(pool)))
    return [dict(with_demonstrations(example, shots), demonstrations=_sources(shots)) for example in held_out]


def words(text: str) -> list:
    """Lowercased word tokens (what BM25 counts)."""
    return _WORD.findall(text.lower())


def rank_similar(pool, queries, k: int) -> list:
    """For each query text, the indices into ``pool`` of its ``k`` most similar examples by BM25
    (:class:`rank_bm25.BM25Okapi` over :func:`words` of each example's :func:`query_text`),
    most similar first; ties keep the pool's order."""
    import numpy as np
    from rank_bm25 import BM25Okapi

    if not pool:
        return [[] for _ in queries]
    corpus = [words(query_text(example)) or [""] for example in pool]
    index = BM25Okapi(corpus)
    ranked = []
    for query in queries:
        scores = np.asarray(index.get_scores(words(query)), dtype=float)
        ranked.append([int(i) for i in np.argsort(-scores, kind="stable")[: int(k)]])
    return ranked


def rewrite_retrieval(model, tokenizer, train, held_out, config: RetrievalConfig) -> list:
    """Every held-out example after its ``k`` most similar training examples, the most similar last."""
    pool = demonstration_pool(train, held_out)
    ranked = rank_similar(pool, [query_text(example) for example in held_out], config.k)
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
