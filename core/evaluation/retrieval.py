"""Retrieval helpers shared by retrieval baselines and retriever plugins.

* :func:`search_terms`: language-aware terms of a text for a lexical index: words
  (lowercased) of scripts written with spaces, and character unigrams and bigrams of
  scripts written without them (Chinese, Japanese, Korean; Thai, Lao, Khmer, Burmese), so a
  Chinese question shares terms with a Chinese passage instead of being one long "word";
* :func:`retriever_builder`: the host side of a ``retriever`` setting
  (:class:`tuneforge.specs.RetrieverSpec`): a name or a mapping with ``name`` -> a built
  retriever;
* :func:`rank_all`: one retriever over one list of passages for many queries, counting the
  queries that every passage scored 0 for (retrieval could only break ties).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence


#: characters of scripts written without spaces between words: CJK ideographs (and their
#: extensions and compatibility forms), kana, Hangul, and Thai, Lao, Khmer and Myanmar letters
_UNSPACED = ("\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff"
             "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff"
             "\U00020000-\U0002fa1f")
_TERM = re.compile(f"([{_UNSPACED}]+)|((?:(?![{_UNSPACED}])\\w)+)")


def search_terms(text: str) -> list:
    """The terms a lexical retriever counts in ``text``, in order.

    A run of letters or digits of a script written with spaces is one term,
    lowercased (``"Locker K007x"`` -> ``locker``, ``k007x``).  A run of
    characters of a script written without spaces (Chinese, Japanese kana,
    Korean, Thai ...) gives each character and each pair of neighbouring
    characters (``"法院判决"`` -> ``法``, ``院``, ``判``, ``决``, ``法院``,
    ``院判``, ``判决``): no segmenter is needed and a two-character word
    matches wherever it occurs.
    """
    terms: list = []
    for unspaced, word in _TERM.findall(str(text).lower()):
        if word:
            terms.append(word)
            continue
        terms.extend(unspaced)
        terms.extend(unspaced[i:i + 2] for i in range(len(unspaced) - 1))
    return terms


def retriever_builder(registry, key: str) -> Callable[[Any], Any]:
    """``build_retriever(setting)`` for baselines: the retriever that ``setting`` selects in
    ``registry`` (the plugins' ``retriever`` registry), built from its typed config.

    ``setting`` is a name (``"bm25"``) or a mapping with ``name`` and that retriever's keys;
    ``key`` names the setting in error messages (``baselines.rag.retriever``).
    """
    from tuneforge.host.components import selected_component
    from tuneforge.host.guard import spec_call

    def build_retriever(setting):
        spec, config = selected_component(registry, setting, key)
        from tuneforge.host.plugin_returns import retriever

        return _Guarded(spec, spec_call(spec, "build", spec.build, config, returns=retriever()))

    return build_retriever


class _Guarded:
    """A plugin's retriever whose ``index`` and ``search`` run as that plugin's code (a mistake in them is
    one line naming the retriever's plugin, also under a built-in baseline)."""

    def __init__(self, spec, retriever):
        self._spec, self._retriever = spec, retriever

    def index(self, passages):
        from tuneforge.host.guard import spec_call

        return spec_call(self._spec, "index", self._retriever.index, passages)

    def search(self, query, k):
        from tuneforge.host.guard import spec_call

        return spec_call(self._spec, "search", self._retriever.search, query, k)

    def __getattr__(self, name):
        return getattr(self._retriever, name)


def rank_all(retriever, passages: Sequence[str], queries: Sequence[str], k: int) -> tuple:
    """``(ranked, ties_only)``: for each query the positions of its ``k`` best passages, best
    first (``retriever.search``), after one ``retriever.index(passages)``; and the positions of the
    queries for which every returned passage scored 0, or none was returned (nothing matched: the
    order is only the passages' own).  No passage: every query gets ``[]`` and none counts."""
    from tuneforge.errors import PluginError

    passages = list(passages)
    if not passages:
        return [[] for _ in queries], []
    retriever.index(passages)
    ranked, ties_only = [], []
    for position, query in enumerate(queries):
        found = list(retriever.search(query, int(k)) or ())
        hits = []
        for entry in found:
            index, score = int(entry[0]), float(entry[1])
            if not 0 <= index < len(passages):
                raise PluginError(f"a retriever's search returned passage position {index} for "
                                  f"{len(passages)} passages (valid: 0 to {len(passages) - 1})")
            hits.append((index, score))
        ranked.append([index for index, _ in hits[:int(k)]])
        if all(score == 0 for _, score in hits):
            ties_only.append(position)
    return ranked, ties_only
