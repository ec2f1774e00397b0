"""Retrievers ``bm25`` and ``dense``: rank passages for a query (:class:`tuneforge.specs.RetrieverSpec`).

* ``bm25``: Okapi BM25 (``bm25s``, Lucene's variant) over the language-aware terms of
  :func:`tuneforge.evaluation.retrieval.search_terms`: lowercased words, and character unigrams
  and bigrams of Chinese, Japanese and Korean text.  A passage sharing no term with the query
  scores 0; ties keep the passages' order.
* ``dense``: ``sentence-transformers`` embeddings (normalised), ranked by cosine similarity.
  The model is a local folder or a Hugging Face id (downloaded by sentence-transformers on first
  use); ``pip install sentence-transformers`` brings the library.

The ``retrieval`` and ``rag`` baselines use them through their ``retriever`` setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import tuneforge
from tuneforge.errors import ConfigError
from tuneforge.evaluation import search_terms
from tuneforge.validation import at_least, between, check, greater_than, non_empty, one_of


@dataclass
class BM25Config:
    """Okapi BM25 over words (and CJK character bigrams), with ``bm25s``.

    k1: term-frequency saturation (higher: repeated terms count for more).
    b: document-length normalisation, 0 (none) to 1 (full).
    method: the BM25 variant of ``bm25s``: lucene, robertson, atire, bm25l or bm25+.
    """

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"

    def __post_init__(self) -> None:
        check(self, k1=at_least(0), b=between(0, 1), method=one_of("lucene", "robertson", "atire", "bm25l", "bm25+"))


class BM25Retriever:
    """``index(passages)`` then ``search(query, k)``: BM25 scores of every passage, best first."""

    def __init__(self, config: BM25Config):
        self.config = config
        self._index = None
        self._size = 0

    def index(self, passages) -> None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index build at DEBUG
        corpus = [search_terms(text) for text in passages]
        self._size = len(corpus)
        self._index = bm25s.BM25(k1=float(self.config.k1), b=float(self.config.b), method=self.config.method)
        self._index.index(corpus, show_progress=False)

    def scores(self, query: str):
        """The BM25 score of every indexed passage for ``query`` (a numpy array; zeros when no term
        of the query is in any passage)."""
        import numpy as np

        if self._index is None:
            raise RuntimeError("BM25Retriever.search before index(passages)")
        known = [term for term in search_terms(query) if term in self._index.vocab_dict]
        if not known:
            return np.zeros(self._size, dtype=float)
        return np.asarray(self._index.get_scores(known), dtype=float)

    def search(self, query: str, k: int) -> list:
        import numpy as np

        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[: int(k)]
        return [(int(i), float(scores[i])) for i in order]


@dataclass
class DenseConfig:
    """Embeddings of ``sentence-transformers`` (normalised; cosine similarity).

    model: a local sentence-transformers folder or a Hugging Face model id (downloaded on first use).
    batch_size: passages embedded per batch.
    device: torch device for the embedding model (null: sentence-transformers' choice).
    """

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    batch_size: int = 32
    device: Optional[str] = None

    def __post_init__(self) -> None:
        check(self, model=non_empty, batch_size=greater_than(0))


class DenseRetriever:
    """``index(passages)`` embeds them; ``search(query, k)`` ranks them by cosine similarity."""

    def __init__(self, config: DenseConfig, model):
        self.config = config
        self.model = model
        self._embeddings = None

    def _embed(self, texts):
        return self.model.encode(list(texts), batch_size=int(self.config.batch_size), normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

    def index(self, passages) -> None:
        self._embeddings = self._embed(passages)

    def search(self, query: str, k: int) -> list:
        import numpy as np

        if self._embeddings is None:
            raise RuntimeError("DenseRetriever.search before index(passages)")
        scores = np.asarray(self._embeddings @ self._embed([query])[0], dtype=float)
        order = np.argsort(-scores, kind="stable")[: int(k)]
        return [(int(i), float(scores[i])) for i in order]


def build_dense(config: DenseConfig) -> DenseRetriever:
    """The dense retriever with its model loaded; a one-line ``ConfigError`` when
    sentence-transformers is not installed or the model cannot be loaded."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("retriever 'dense' needs the sentence-transformers package: "
                          "pip install sentence-transformers (or use retriever=bm25)") from None
    try:
        model = SentenceTransformer(config.model, device=config.device)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"retriever 'dense': cannot load model '{config.model}': {first}") from None
    return DenseRetriever(config, model)


@tuneforge.hookimpl
def tuneforge_retrievers():
    return [
        tuneforge.RetrieverSpec("bm25", BM25Config, "BM25 (bm25s) over words and CJK character bigrams",
                                build=BM25Retriever),
        tuneforge.RetrieverSpec("dense", DenseConfig, "sentence-transformers embeddings, cosine similarity",
                                build=build_dense),
    ]
