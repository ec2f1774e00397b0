"""Generation evaluators: ``exact_match``, ``contains``, ``regex``, ``rouge``, ``bleu``, ``chrf``.

Each greedily generates an answer to every held-out prompt (the example's
messages without the final assistant turn, rendered with the training chat
template, optionally after few-shot turns) and compares it with the reference
(that final assistant turn).  Generation is shared through
:func:`tuneforge.evaluation.generate_predictions`: evaluators with the same
``max_new_tokens`` and ``few_shot`` score the same predictions, generated once
per model state.

The ``score_*`` functions take predictions and references and are usable on
their own.  ROUGE-L comes from ``rouge-score`` (with :class:`RougeTokenizer`:
CJK characters count as tokens instead of being dropped, and a warning says
when most of the references' text is still discarded), BLEU and chrF from
``sacrebleu``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import tuneforge
from tuneforge.errors import ConfigError, DataError
from tuneforge.evaluation import EvaluationPass, few_shot_messages, generate_predictions, record_scores
from tuneforge.validation import at_least, check, non_empty, one_of

#: sacrebleu's BLEU tokenizers (``sacrebleu.metrics.bleu``)
BLEU_TOKENIZERS = ("13a", "none", "zh", "intl", "char", "ja-mecab", "ko-mecab", "spm", "flores101", "flores200",
                   "spBLEU-1K")


def valid_few_shot(value) -> Optional[str]:
    """A rule for ``few_shot`` fields: a list of ``{user, assistant}`` mappings."""
    if not isinstance(value, (list, tuple)):
        return f"must be a list of {{user: ..., assistant: ...}} turns, got {value!r}"
    try:
        few_shot_messages(value)
    except ConfigError as exc:
        return str(exc)
    return None


def valid_pattern(value) -> Optional[str]:
    """A rule: a Python regular expression that compiles."""
    try:
        re.compile(value)
    except (re.error, TypeError) as exc:
        return f"is not a valid regular expression ({exc}): {value!r}"
    return None


@dataclass
class GenerationEvalConfig:
    """Settings shared by the generation evaluators.

    max_new_tokens: greedy decoding stops at end-of-turn or after this many tokens.
    batch_size: prompts per ``generate`` call (left-padded).
    few_shot: list of ``{user: ..., assistant: ...}`` turns put before every
        prompt (after its system message), e.g. for a fair base-model baseline.
    limit: score only the first N held-out examples (None: all).
    """

    max_new_tokens: int = 64
    batch_size: int = 8
    few_shot: list = field(default_factory=list)
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        check(self, max_new_tokens=at_least(1), batch_size=at_least(1), few_shot=valid_few_shot, limit=at_least(1))


@dataclass
class NormalizedEvalConfig(GenerationEvalConfig):
    """strip: ignore surrounding whitespace.
    lowercase: ignore case.
    collapse_whitespace: treat any run of whitespace as one space."""

    strip: bool = True
    lowercase: bool = False
    collapse_whitespace: bool = False


@dataclass
class RegexEvalConfig(GenerationEvalConfig):
    """pattern: a Python regular expression every prediction should match; when
    None each record's ``pattern_field`` gives its own pattern.
    pattern_field: the record key holding a per-record pattern (used when ``pattern`` is None).
    fullmatch: the whole prediction must match (default: a match anywhere).
    ignore_case: match case-insensitively."""

    pattern: Optional[str] = None
    pattern_field: str = "pattern"
    fullmatch: bool = False
    ignore_case: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, pattern=valid_pattern, pattern_field=non_empty)


@dataclass
class RougeEvalConfig(GenerationEvalConfig):
    """use_stemmer: Porter-stem words before matching (rouge-score's option).

    Text is tokenized as rouge-score does (lowercased ASCII letters and
    digits), plus each CJK character as a token; other scripts are discarded
    by that tokenizer, and a warning gives the share when it discards most of
    a reference."""

    use_stemmer: bool = False


@dataclass
class BleuEvalConfig(GenerationEvalConfig):
    """tokenize: sacrebleu tokenizer (``13a``, ``intl``, ``char``, ``none`` ...).
    lowercase: case-insensitive BLEU."""

    tokenize: str = "13a"
    lowercase: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, tokenize=one_of(*BLEU_TOKENIZERS))


@dataclass
class ChrfEvalConfig(GenerationEvalConfig):
    """word_order: 0 for chrF, 2 for chrF++ (sacrebleu's ``word_order``)."""

    word_order: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, word_order=at_least(0))


# ---------------------------------------------------------------------------
# Scoring functions: predictions + references -> metrics
# ---------------------------------------------------------------------------


def normalize(text: str, *, strip: bool = True, lowercase: bool = False, collapse_whitespace: bool = False) -> str:
    if collapse_whitespace:
        text = " ".join(text.split())
    if strip:
        text = text.strip()
    if lowercase:
        text = text.lower()
    return text


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def score_exact_match(predictions, references, **norm) -> dict:
    """``{"exact_match": fraction}`` of predictions equal to their reference after normalisation."""
    _check_lengths(predictions, references)
    if not predictions:
        return {}
    hits = sum(normalize(p, **norm) == normalize(r, **norm) for p, r in zip(predictions, references))
    return {"exact_match": hits / len(predictions)}


def score_contains(predictions, references, **norm) -> dict:
    """``{"contains": fraction}`` of predictions that contain their (normalised) reference."""
    _check_lengths(predictions, references)
    if not predictions:
        return {}
    hits = sum(normalize(r, **norm) in normalize(p, **norm) for p, r in zip(predictions, references))
    return {"contains": hits / len(predictions)}


def score_regex(predictions, patterns, *, fullmatch: bool = False, ignore_case: bool = False) -> dict:
    """``{"regex": fraction}`` of predictions matching their pattern (one pattern per prediction)."""
    _check_lengths(predictions, patterns)
    if not predictions:
        return {}
    flags = re.IGNORECASE if ignore_case else 0
    hits = 0
    for prediction, pattern in zip(predictions, patterns):
        try:
            compiled = re.compile(pattern, flags)
        except re.error as exc:
            raise ConfigError(f"regex evaluator: invalid pattern {pattern!r}: {exc}") from None
        hits += bool(compiled.fullmatch(prediction) if fullmatch else compiled.search(prediction))
    return {"regex": hits / len(predictions)}


#: characters of the CJK scripts (Han, kana, Hangul): rouge-score's own tokenizer drops them (it keeps
#: ``[a-z0-9]`` only); :class:`RougeTokenizer` makes each one a token
CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")
#: a reference whose letters and digits the tokenizer keeps less than half of is reported
KEPT_AT_LEAST = 0.5


class RougeTokenizer:
    """rouge-score's default tokenization (lowercased ASCII letters and digits, Porter-stemmed with
    ``use_stemmer``), plus every CJK character as a token of its own, so that Chinese, Japanese and
    Korean text is scored by characters instead of dropped.  English text gets exactly rouge-score's
    tokens."""

    def __init__(self, use_stemmer: bool = False):
        from rouge_score import tokenizers

        self._default = tokenizers.DefaultTokenizer(use_stemmer=use_stemmer)

    def tokenize(self, text: str) -> list:
        tokens: list = []
        start = 0
        for match in CJK.finditer(text):
            if match.start() > start:
                tokens += self._default.tokenize(text[start:match.start()])
            tokens.append(match.group())
            start = match.end()
        if start < len(text):
            tokens += self._default.tokenize(text[start:])
        return tokens


def dropped_characters(text: str) -> tuple[int, int]:
    """``(dropped, total)``: the letters and digits of ``text``, and how many of them
    :class:`RougeTokenizer` discards (neither ASCII nor CJK: Cyrillic, Arabic, Thai, accented Latin ...)."""
    total = dropped = 0
    for char in text:
        if char.isalnum():
            total += 1
            if not (char.isascii() or CJK.match(char)):
                dropped += 1
    return dropped, total


#: reference sets already warned about (one warning per set, however often it is scored)
_WARNED: set = set()


def warn_dropped_text(references: Sequence[str]) -> Optional[str]:
    """Log, once per set of ``references``, how many of them ROUGE-L's tokenizer keeps less than
    :data:`KEPT_AT_LEAST` of (their letters and digits), with the share of text it discards and the
    scripts concerned; returns the warning (None when every reference is mostly kept)."""
    import logging
    import unicodedata
    from collections import Counter

    counts = [dropped_characters(r) for r in references]
    poor = [i for i, (dropped, total) in enumerate(counts) if total and dropped / total > 1 - KEPT_AT_LEAST]
    if not poor:
        return None
    key = hash(tuple(references))
    scripts = Counter(unicodedata.name(char, "UNKNOWN").split()[0].title() for i in poor for char in references[i]
                      if char.isalnum() and not (char.isascii() or CJK.match(char)))
    share = sum(counts[i][0] for i in poor) / sum(counts[i][1] for i in poor)
    message = (f"rouge: its tokenizer keeps only ASCII letters, digits and CJK characters; it discards "
               f"{100 * share:.0f}% of the letters of {len(poor)} of {len(references)} references "
               f"({', '.join(name for name, _ in scripts.most_common(3))} text), so ROUGE-L says little about "
               "them: compare with chrf (characters) instead")
    if key not in _WARNED:
        _WARNED.add(key)
        logging.getLogger("tuneforge").warning("%s", message)
    return message


def rouge_scores(predictions, references, *, use_stemmer: bool = False) -> list:
    """The ROUGE-L F-measure of every prediction against its reference (``rouge_score`` with
    :class:`RougeTokenizer`); warns when the tokenizer discards most of the references' text
    (:func:`warn_dropped_text`)."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    warn_dropped_text(list(references))
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=RougeTokenizer(use_stemmer))
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


def score_rouge(predictions, references, *, use_stemmer: bool = False) -> dict:
    """``{"rougeL": mean F-measure}`` of ROUGE-L (:func:`rouge_scores`)."""
    scores = rouge_scores(predictions, references, use_stemmer=use_stemmer)
    return {"rougeL": sum(scores) / len(scores)} if scores else {}


def score_bleu(predictions, references, *, tokenize: str = "13a", lowercase: bool = False) -> dict:
    """``{"bleu": corpus BLEU}`` on sacrebleu's 0-100 scale."""
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions, references)
    if not predictions:
        return {}
    metric = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)
    return {"bleu": float(metric.corpus_score(list(predictions), [list(references)]).score)}


def score_chrf(predictions, references, *, word_order: int = 0) -> dict:
    """``{"chrf": corpus chrF}`` on sacrebleu's 0-100 scale (chrF++ with ``word_order=2``)."""
    from sacrebleu.metrics import CHRF

    _check_lengths(predictions, references)
    if not predictions:
        return {}
    metric = CHRF(word_order=word_order)
    return {"chrf": float(metric.corpus_score(list(predictions), [list(references)]).score)}


def _norm_options(config) -> dict:
    return {"strip": config.strip, "lowercase": config.lowercase,
            "collapse_whitespace": config.collapse_whitespace}


def regex_patterns(examples, config) -> list:
    """The pattern for every example: ``config.pattern`` or the record's ``pattern_field``."""
    if config.pattern is not None:
        return [config.pattern] * len(examples)
    patterns = []
    for example in examples:
        pattern = (example.get("record") or {}).get(config.pattern_field)
        if not isinstance(pattern, str):
            raise DataError(f"{example.get('source', '<example>')}: regex evaluator needs a pattern: set "
                            f"evaluators.regex.pattern or give each record a '{config.pattern_field}' string")
        patterns.append(pattern)
    return patterns


def score_predictions(metric: str, predictions, references, examples, config) -> dict:
    """Score with the named generation metric, reading its options from ``config``."""
    if metric == "exact_match":
        return score_exact_match(predictions, references, **_norm_options(config))
    if metric == "contains":
        return score_contains(predictions, references, **_norm_options(config))
    if metric == "regex":
        return score_regex(predictions, regex_patterns(examples, config), fullmatch=config.fullmatch,
                           ignore_case=config.ignore_case)
    if metric == "rouge":
        return score_rouge(predictions, references, use_stemmer=config.use_stemmer)
    if metric == "bleu":
        return score_bleu(predictions, references, tokenize=config.tokenize, lowercase=config.lowercase)
    if metric == "chrf":
        return score_chrf(predictions, references, word_order=config.word_order)
    raise ConfigError(f"unknown generation metric '{metric}'; valid: {', '.join(GENERATION_METRICS)}")


def example_scores(metric: str, predictions, references, examples, config) -> Optional[list]:
    """Per-example scores whose mean is the metric (1/0 for a match, the F-measure for ROUGE-L), for
    the run's confidence intervals; None for the corpus-level ``bleu`` and ``chrf``."""
    if metric in ("exact_match", "contains"):
        norm = _norm_options(config)
        same = (lambda p, r: normalize(p, **norm) == normalize(r, **norm)) if metric == "exact_match" \
            else (lambda p, r: normalize(r, **norm) in normalize(p, **norm))
        return [float(same(p, r)) for p, r in zip(predictions, references)]
    if metric == "regex":
        patterns = regex_patterns(examples, config)
        return [score_regex([p], [pattern], fullmatch=config.fullmatch, ignore_case=config.ignore_case)["regex"]
                for p, pattern in zip(predictions, patterns)]
    if metric == "rouge":
        return rouge_scores(predictions, references, use_stemmer=config.use_stemmer)
    return None


def record_example_scores(metric: str, rows: list, examples, config,
                          evaluation: Optional[EvaluationPass] = None) -> None:
    """:func:`tuneforge.evaluation.record_scores` of :func:`example_scores` under the metric's key."""
    values = example_scores(metric, [r["output"] for r in rows], [r["reference"] for r in rows], examples, config)
    if values is not None:
        record_scores(SCORE_KEYS[metric], values, evaluation=evaluation, rows=rows)


def limited(examples, limit):
    return list(examples) if limit is None else list(examples)[: int(limit)]


def predict(model, tokenizer, examples, config, set_name: str = "val", *,
            evaluation: Optional[EvaluationPass] = None) -> list:
    """Generated rows for ``examples`` with the config's generation settings (shared within ``evaluation``)."""
    return generate_predictions(model, tokenizer, examples, max_new_tokens=config.max_new_tokens,
                                batch_size=config.batch_size, few_shot=config.few_shot, set_name=set_name,
                                evaluation=evaluation)


def _evaluator(metric: str):
    def evaluate(model, tokenizer, examples, config, *, evaluation: Optional[EvaluationPass] = None) -> dict:
        examples = limited(examples, config.limit)
        if not examples:
            return {}
        rows = predict(model, tokenizer, examples, config, evaluation=evaluation)
        record_example_scores(metric, rows, examples, config, evaluation)
        return score_predictions(metric, [r["output"] for r in rows], [r["reference"] for r in rows],
                                 examples, config)

    evaluate.__name__ = f"evaluate_{metric}"
    evaluate.__doc__ = f"Generate answers (shared within a pass) and score them with ``{metric}``."
    return evaluate


#: metric name -> (config class, description)
GENERATION_METRICS = {
    "exact_match": (NormalizedEvalConfig, "generated answer equals the reference (optionally normalised)"),
    "contains": (NormalizedEvalConfig, "generated answer contains the reference"),
    "regex": (RegexEvalConfig, "generated answer matches a regular expression"),
    "rouge": (RougeEvalConfig, "ROUGE-L F-measure (rouge-score)"),
    "bleu": (BleuEvalConfig, "corpus BLEU, 0-100 (sacrebleu)"),
    "chrf": (ChrfEvalConfig, "corpus chrF, 0-100 (sacrebleu)"),
}

#: metric name -> the key its score_* function returns
SCORE_KEYS = {"exact_match": "exact_match", "contains": "contains", "regex": "regex", "rouge": "rougeL",
              "bleu": "bleu", "chrf": "chrf"}

evaluate_exact_match = _evaluator("exact_match")
evaluate_contains = _evaluator("contains")
evaluate_regex = _evaluator("regex")
evaluate_rouge = _evaluator("rouge")
evaluate_bleu = _evaluator("bleu")
evaluate_chrf = _evaluator("chrf")


@tuneforge.hookimpl
def tuneforge_evaluators():
    functions = {"exact_match": evaluate_exact_match, "contains": evaluate_contains, "regex": evaluate_regex,
                 "rouge": evaluate_rouge, "bleu": evaluate_bleu, "chrf": evaluate_chrf}
    return [tuneforge.EvaluatorSpec(name, config, description, evaluate=functions[name],
                                    metrics=(tuneforge.MetricInfo(SCORE_KEYS[name], description=description),))
            for name, (config, description) in GENERATION_METRICS.items()]
