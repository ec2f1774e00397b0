"""The ``rag`` baseline: the base model with passages of the user's own documents in its prompt.

``baselines=[rag] baselines.rag.corpus=<folder, file or list of them>`` reads the documents
(text, Markdown, HTML; PDF with ``tuneforge[rag]``; :mod:`tuneforge.plugins.documents`), cuts
them into chunks of about ``chunk_chars`` characters, indexes the chunks with the retriever that
``baselines.rag.retriever`` selects (default ``bm25``) and, for each held-out prompt, puts its
``k`` best chunks into the system message, the best first, each headed by where it comes from.
That answers "fine-tune, or RAG over our documents?" with one more column next to base, the
example baselines (``few_shot``, ``retrieval``) and tuned.

Before anything is retrieved, the corpus is checked for held-out answers (at least
``leak_min_chars`` characters) found verbatim in a document, case and spacing aside.  Documents
may rightly hold the answers (that is what retrieval is for), so by default that is a warning
(``leak_check=warn``); where the documents must not hold them (the demo's corpus teaches the
citation rules, not the citations), ``leak_check=refuse`` stops the run.  ``baseline_info.rag``
in ``metrics.json`` records the corpus (documents, chunks), the queries that matched no chunk
(every score 0: their passages are only the first in order) and the answers found in the corpus.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

import tuneforge
from tuneforge.evaluation import query_text, rank_all
from tuneforge.plugins.baselines import default_retriever, report_ties
from tuneforge.plugins.documents import FORMATS, PDF_EXTRA, read_corpus, skipped_files
from tuneforge.specs import selects
from tuneforge.validation import at_least, check, is_placeholder, non_empty, one_of

log = logging.getLogger("tuneforge")

PREAMBLE = "Passages from the reference documents (use them where they answer the request):"


@dataclass
class RagConfig:
    """The base model with the k passages of your documents most similar to each held-out prompt.

    corpus: the documents: a folder (read recursively), a file, or a list of them; .txt, .md, .html, .pdf.
    k: how many passages per prompt.
    chunk_chars: the longest passage, in characters (paragraphs are packed up to it).
    overlap_chars: characters a passage repeats from the end of the one before it.
    retriever: the retriever ranking passages: a name (bm25, dense, a plugin's) or a mapping with
        name and its keys, e.g. {name: dense, model: ./all-MiniLM-L6-v2}.
    preamble: the line put before the passages in the system message.
    leak_check: warn (default), refuse or off: what a held-out answer found verbatim in the corpus does.
    leak_min_chars: answers shorter than this (a number, yes/no) are not leak-checked: they occur by chance.
    """

    corpus: Any = MISSING
    k: int = 3
    chunk_chars: int = 800
    overlap_chars: int = 100
    retriever: Any = selects("retriever", "bm25")
    preamble: str = PREAMBLE
    leak_check: str = "warn"
    leak_min_chars: int = 12

    #: the corpus is part of the run's data: made absolute, hashed into its identity (resume, eval)
    DATA_FILES: ClassVar[tuple] = ("corpus",)

    def __post_init__(self) -> None:
        check(self, k=at_least(1), chunk_chars=at_least(50), overlap_chars=at_least(0),
              leak_check=one_of("warn", "refuse", "off"), leak_min_chars=at_least(1), preamble=non_empty,
              corpus=_corpus_problem)
        if self.overlap_chars >= self.chunk_chars:
            check(self, overlap_chars=lambda value: f"must be below chunk_chars ({self.chunk_chars}), got {value}")


def _corpus_problem(corpus) -> Optional[str]:
    """A missing path, or PDF documents without pypdf (said before any model loads)."""
    if is_placeholder(corpus):
        return None
    entries = [corpus] if isinstance(corpus, str) else corpus
    if not isinstance(entries, (list, tuple)) or not entries or not all(isinstance(e, str) and e for e in entries):
        return f"must be a folder or file path, or a list of them, got {corpus!r}"
    pdfs = False
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.exists():
            return f"no such file or folder: {path}"
        pdfs = pdfs or path.suffix.lower() == ".pdf" or (
            path.is_dir() and any(p.suffix.lower() == ".pdf" for p in path.rglob("*")))
        if path.is_file() and path.suffix.lower() not in FORMATS:
            return f"{path} is not a document format the rag baseline reads; valid: {', '.join(sorted(FORMATS))}"
    if pdfs:
        import importlib.util

        if importlib.util.find_spec("pypdf") is None:
            return f"has PDF documents, and reading them needs pypdf: {PDF_EXTRA}"
    return None


def _normal(text: str) -> str:
    return " ".join(str(text).lower().split())


def held_out_answers(held_out) -> list:
    """``[(source, answer)]``: the final assistant answer of each held-out example."""
    answers = []
    for example in held_out:
        messages = example.get("messages") or []
        if messages and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str):
            answers.append((example.get("source", "?"), messages[-1]["content"]))
    return answers


def find_leaks(documents: dict, held_out, min_chars: int) -> list:
    """``[(document name, held-out source, answer)]`` for every held-out answer of at least
    ``min_chars`` characters (whitespace collapsed) that a document holds verbatim, case and
    spacing aside."""
    texts = {name: _normal(text) for name, text in documents.items()}
    leaks = []
    for source, answer in held_out_answers(held_out):
        wanted = _normal(answer)
        if len(wanted) < int(min_chars):
            continue
        leaks += [(name, source, answer) for name, text in texts.items() if wanted in text]
    return leaks


def check_leaks(config: RagConfig, documents: dict, held_out, info: dict, context=None) -> None:
    """Warn about (``leak_check=warn``) or refuse (``refuse``) held-out answers found in the corpus;
    their count goes to ``info["leaked_answers"]``."""
    if config.leak_check == "off":
        return
    leaks = find_leaks(documents, held_out, config.leak_min_chars)
    info["leaked_answers"] = len(leaks)
    if not leaks:
        return
    name, source, answer = leaks[0]
    where = f"{len(leaks)} held-out answers are in the corpus, e.g. {name} holds" if len(leaks) > 1 \
        else f"{name} holds"
    message = f"baselines.rag.corpus: {where} the answer of held-out example {source} verbatim ({answer!r})"
    if config.leak_check == "refuse":
        raise tuneforge.ConfigError(f"{message}; the corpus must not hold held-out answers (leak_check=refuse): "
                                    "remove them, or set baselines.rag.leak_check=warn")
    if context is None or context.is_main:
        log.warning("%s: the rag column looks them up (baselines.rag.leak_check=refuse makes this an error)",
                    message)


def with_passages(example: dict, passages: list, preamble: str) -> dict:
    """A copy of ``example`` whose system message ends with the numbered passages (a system message
    is added when it has none); its other turns stay as they were."""
    block = "\n\n".join([preamble, *(f"[{i}] {chunk.label()}\n{chunk.text}" for i, chunk in enumerate(passages, 1))])
    messages = [dict(m) for m in example.get("messages") or []]
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        messages[0]["content"] = f"{messages[0]['content']}\n\n{block}"
    else:
        messages.insert(0, {"role": "system", "content": block})
    return dict(example, messages=messages)


def rewrite_rag(model, tokenizer, train, held_out, config: RagConfig, *, info: Optional[dict] = None,
                build_retriever=None, context=None) -> list:
    """Every held-out example with its ``k`` most similar corpus passages in its system message; the
    passages' labels (``file:line (headings)``) are listed under ``demonstrations``."""
    info = {} if info is None else info
    chunks, documents = read_corpus(config.corpus, int(config.chunk_chars), int(config.overlap_chars),
                                    key="baselines.rag.corpus")
    skipped = skipped_files(config.corpus)
    if skipped and (context is None or context.is_main):
        log.warning("baseline rag: %d files of the corpus are not documents it reads (%s) and were left out: %s",
                    len(skipped), ", ".join(sorted(FORMATS)), ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5
                                                                                        else ""))
    info.update(documents=len(documents), chunks=len(chunks), skipped_files=len(skipped))
    check_leaks(config, documents, held_out, info, context)
    queries = [query_text(example) for example in held_out]
    ranked, ties = rank_all(default_retriever(config.retriever, build_retriever),
                            [chunk.searchable() for chunk in chunks], queries, config.k)
    report_ties("rag", ties, len(queries), "corpus passage", info, context)
    rewritten = []
    for example, order in zip(held_out, ranked):
        passages = [chunks[i] for i in order]
        rewritten.append(dict(with_passages(example, passages, config.preamble),
                              demonstrations=[chunk.label() for chunk in passages]))
    return rewritten


def describe(config: RagConfig) -> str:
    """The column label, e.g. ``rag (citation_rules.md, bm25), k=3``."""
    corpus = [config.corpus] if isinstance(config.corpus, str) else list(config.corpus)
    names = Path(str(corpus[0])).name if len(corpus) == 1 else f"{len(corpus)} paths"
    retriever = config.retriever if isinstance(config.retriever, str) else config.retriever.get("name")
    return f"rag ({names}, {retriever}), k={config.k}"


@tuneforge.hookimpl
def tuneforge_baselines():
    return [tuneforge.BaselineSpec("rag", RagConfig, "the k passages of your documents most similar to each prompt",
                                   rewrite=rewrite_rag, describe=describe)]
