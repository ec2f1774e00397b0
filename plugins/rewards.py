"""Rewards: ``regex``, ``exact``, ``contains``, ``similarity``, ``length``, ``model`` and ``python``; and the ``reward``
evaluator, which reports the run's rewards on generations for the held-out prompts.

Each reward's ``build(config, context)`` returns ``score(prompts, completions, records)``: one
number per completion (see :class:`tuneforge.RewardSpec`).  The selected rewards add up, each
times its ``weight``, to the run's reward.
"""

from __future__ import annotations

import difflib
import importlib
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

import tuneforge
from tuneforge.errors import ConfigError
from tuneforge.validation import at_least, check, greater_than, one_of

#: the folder of a run directory that a ``loss=reward`` run writes its reward model to
REWARD_MODEL_FOLDER = "reward_model"


def _pattern_problem(pattern) -> Optional[str]:
    if not isinstance(pattern, str) or not pattern:
        return f"must be a regular expression (Python re syntax), got {pattern!r}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regular expression: {exc}"
    return None


@dataclass
class RegexRewardConfig(tuneforge.RewardConfig):
    """1 when the completion matches a regular expression, else 0.

    weight: this reward's weight in the run's total reward.
    pattern: the regular expression (Python ``re`` syntax).  Required.
    mode: ``search`` (anywhere in the completion), ``match`` (at its start) or ``fullmatch``
        (the whole completion, surrounding whitespace stripped).
    ignore_case: match letters regardless of case.
    """

    pattern: str = MISSING
    mode: str = "search"
    ignore_case: bool = False

    def __post_init__(self) -> None:
        check(self, pattern=_pattern_problem, mode=one_of("search", "match", "fullmatch"))


def build_regex(config: RegexRewardConfig, context=None):
    compiled = re.compile(config.pattern, re.IGNORECASE if config.ignore_case else 0)
    find = getattr(compiled, config.mode)

    def regex(prompts, completions, records):
        return [1.0 if find(completion.strip()) else 0.0 for completion in completions]

    return regex


@dataclass
class ReferenceRewardConfig(tuneforge.RewardConfig):
    """Compares the completion with a reference field of the example's record (1 or 0).

    weight: this reward's weight in the run's total reward.
    field: the record's key that holds the reference (``reference``; alpaca data: ``output``).
        A record without it stops the run, naming the key and the record's keys.
    ignore_case: compare case-insensitively.
    strip: ignore leading and trailing whitespace.
    collapse_whitespace: treat every run of whitespace as one space.
    strip_punctuation: ignore ASCII punctuation.
    """

    field: str = "reference"
    ignore_case: bool = True
    strip: bool = True
    collapse_whitespace: bool = True
    strip_punctuation: bool = False

    def __post_init__(self) -> None:
        check(self, field=lambda value: None if isinstance(value, str) and value else
              f"must be a record key name, got {value!r}")


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str, config: ReferenceRewardConfig) -> str:
    """``text`` with the comparison options of ``config`` applied."""
    if config.strip_punctuation:
        text = text.translate(_PUNCTUATION)
    if config.collapse_whitespace:
        text = " ".join(text.split())
    if config.strip:
        text = text.strip()
    if config.ignore_case:
        text = text.casefold()
    return text


def _reference(record: dict, config: ReferenceRewardConfig, reward: str) -> str:
    value = record.get(config.field) if isinstance(record, dict) else None
    if value is None:
        keys = ", ".join(sorted(map(str, record))) if isinstance(record, dict) else "none"
        raise ConfigError(f"rewards.{reward}.field='{config.field}': a record has no such key (its keys: {keys}); "
                          f"set rewards.{reward}.field to the key that holds the reference answer")
    return value if isinstance(value, str) else str(value)


def build_exact(config: ReferenceRewardConfig, context=None):
    def exact(prompts, completions, records):
        return [1.0 if normalise(c, config) == normalise(_reference(r, config, "exact"), config) else 0.0
                for c, r in zip(completions, records)]

    return exact


def build_contains(config: ReferenceRewardConfig, context=None):
    def contains(prompts, completions, records):
        return [1.0 if normalise(_reference(r, config, "contains"), config) in normalise(c, config) else 0.0
                for c, r in zip(completions, records)]

    return contains


def build_similarity(config: ReferenceRewardConfig, context=None):
    """Partial credit between 0 and 1: difflib's ratio of matching characters (``2 * matches / total length``).

    An answer with one field wrong still earns most of the reward, so GRPO's groups keep a signal
    that ranks a nearly right answer above a wrong one; ``exact`` gives 1 only to the whole answer.
    """
    def similarity(prompts, completions, records):
        scores = []
        for completion, record in zip(completions, records):
            reference = normalise(_reference(record, config, "similarity"), config)
            scores.append(difflib.SequenceMatcher(None, normalise(completion, config), reference,
                                                  autojunk=False).ratio())
        return scores

    return similarity


@dataclass
class LengthRewardConfig(tuneforge.RewardConfig):
    """A penalty for completions longer than a target: ``-penalty * max(0, length - target)`` (0 within it).

    weight: this reward's weight in the run's total reward.
    target: the longest completion that costs nothing.
    unit: ``tokens`` (the run's tokenizer) or ``chars``.
    penalty: what each unit beyond the target costs.
    """

    target: int = 64
    unit: str = "tokens"
    penalty: float = 0.01

    def __post_init__(self) -> None:
        check(self, target=at_least(0), unit=one_of("tokens", "chars"), penalty=at_least(0))


def build_length(config: LengthRewardConfig, context):
    tokenizer = getattr(context, "tokenizer", None)
    if config.unit == "tokens" and tokenizer is None:
        raise ConfigError("rewards.length.unit=tokens needs the run's tokenizer; use rewards.length.unit=chars")

    def size(text: str) -> int:
        return len(text) if config.unit == "chars" else len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def length(prompts, completions, records):
        return [-config.penalty * max(0, size(c) - config.target) for c in completions]

    return length


@dataclass
class ModelRewardConfig(tuneforge.RewardConfig):
    """The score of a sequence-classification model on the prompt followed by the completion.

    weight: this reward's weight in the run's total reward.
    path: a checkpoint folder that ``transformers.AutoModelForSequenceClassification`` loads, or a
        run directory holding one in ``reward_model/`` (what a ``loss=reward`` run writes).  Required.
    label: which output of the head is the score (0 for a one-output reward head).
    batch_size: texts scored per forward pass.
    max_length: tokens kept per text (the end is cut).
    """

    path: str = MISSING
    label: int = 0
    batch_size: int = 8
    max_length: int = 1024

    def __post_init__(self) -> None:
        check(self, label=at_least(0), batch_size=at_least(1), max_length=at_least(2))


def reward_model_folder(path: str) -> Path:
    """The checkpoint folder ``path`` names: ``<path>/reward_model/`` for a run directory, else ``path``."""
    folder = Path(path).expanduser()
    if (folder / REWARD_MODEL_FOLDER).is_dir():
        folder = folder / REWARD_MODEL_FOLDER
    if not (folder / "config.json").is_file():
        raise ConfigError(f"rewards.model.path={path}: no sequence-classification checkpoint there (no config.json"
                          f"{'' if folder.name == REWARD_MODEL_FOLDER else ', and no ' + REWARD_MODEL_FOLDER + '/'}); "
                          "give a checkpoint folder or the directory of a loss=reward run")
    return folder


def build_model(config: ModelRewardConfig, context):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = reward_model_folder(config.path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"rewards.model.path={config.path}: cannot load a sequence-classification model from "
                          f"{folder}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if config.label >= model.config.num_labels:
        raise ConfigError(f"rewards.model.label={config.label}: the model at {folder} has {model.config.num_labels} "
                          f"output(s); valid: 0..{model.config.num_labels - 1}")
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(folder) if has_tokenizer else getattr(context, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"rewards.model.path={config.path}: {folder} holds no tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    model.eval().to(getattr(context, "device", None) or "cpu")

    def score(prompts, completions, records):
        texts = [p + c for p, c in zip(prompts, completions)]
        values = []
        side = tokenizer.padding_side
        tokenizer.padding_side = "right"
        try:
            with torch.no_grad():
                for start in range(0, len(texts), config.batch_size):
                    batch = tokenizer(texts[start:start + config.batch_size], add_special_tokens=False, padding=True,
                                      truncation=True, max_length=config.max_length,
                                      return_tensors="pt").to(model.device)
                    values += model(**batch).logits[:, config.label].float().tolist()
        finally:
            tokenizer.padding_side = side
        return values

    return score


@dataclass
class PythonRewardConfig(tuneforge.RewardConfig):
    """A Python function as the reward, for quick experiments: ``function(prompt, completion, record)``
    returns one number per completion.

    weight: this reward's weight in the run's total reward.
    function: its dotted path, ``package.module:function`` or ``package.module.function``; the module
        must be importable (installed, or on ``PYTHONPATH``).  Required.
    """

    function: str = MISSING

    def __post_init__(self) -> None:
        check(self, function=lambda value: None if isinstance(value, str) and "." in value.replace(":", ".")
              else f"must be a dotted path module:function, got {value!r}")


def resolve_function(path: str):
    """The function a dotted path names (``module:function`` or ``module.function``), or a one-line
    ConfigError."""
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    where = f"rewards.python.function={path}"
    if not module_name or not name:
        raise ConfigError(f"{where}: expected module:function or module.function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import module '{module_name}' ({type(exc).__name__}: {exc}); put it "
                          "on PYTHONPATH or install it") from None
    function = module
    for part in name.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ConfigError(f"{where}: module '{module_name}' has no '{name}'")
    if not callable(function):
        raise ConfigError(f"{where}: '{name}' in module '{module_name}' is a {type(function).__name__}, "
                          "not a function")
    return function


def build_python(config: PythonRewardConfig, context=None):
    function = resolve_function(config.function)

    def python(prompts, completions, records):
        return [function(p, c, r) for p, c, r in zip(prompts, completions, records)]

    return python


@tuneforge.hookimpl
def tuneforge_rewards():
    return [
        tuneforge.RewardSpec("regex", RegexRewardConfig, "1 when the completion matches a regular expression",
                             build=build_regex),
        tuneforge.RewardSpec("exact", ReferenceRewardConfig, "1 when the completion equals the record's reference",
                             build=build_exact),
        tuneforge.RewardSpec("contains", ReferenceRewardConfig,
                             "1 when the completion contains the record's reference", build=build_contains),
        tuneforge.RewardSpec("similarity", ReferenceRewardConfig,
                             "partial credit (0..1): the share of characters matching the record's reference",
                             build=build_similarity),
        tuneforge.RewardSpec("length", LengthRewardConfig, "a penalty per token (or character) beyond a target",
                             build=build_length),
        tuneforge.RewardSpec("model", ModelRewardConfig,
                             "a sequence-classification checkpoint's score (e.g. a loss=reward run's)",
                             build=build_model),
        tuneforge.RewardSpec("python", PythonRewardConfig, "a Python function named by its dotted path",
                             build=build_python),
    ]


# ---------------------------------------------------------------------------
# the reward evaluator
# ---------------------------------------------------------------------------


@dataclass
class RewardEvaluatorConfig:
    """The run's rewards (``rewards=[...]``, which it needs; with any loss) on greedy generations for the
    held-out prompts: the mean total reward (``reward/mean``, with its interval; the evaluator's primary
    metric, on the rewards' own scale, not in percent) and each reward's mean (``reward/<key>``, unweighted).

    max_new_tokens: the longest generation scored.
    batch_size: prompts generated at once.
    """

    max_new_tokens: int = 64
    batch_size: int = 8

    def __post_init__(self) -> None:
        check(self, max_new_tokens=at_least(1), batch_size=greater_than(0))


def evaluate_reward(model, tokenizer, examples, config: RewardEvaluatorConfig, evaluation=None) -> dict:
    from tuneforge.evaluation import generate_predictions, record_scores

    rewards = getattr(evaluation, "rewards", None)
    if rewards is None or not len(rewards):
        raise ConfigError("evaluators.reward scores generations with the run's rewards, but the run selects none; "
                          "select some with 'rewards=[regex]' rewards.regex.pattern=<pattern> (or drop the reward "
                          "evaluator)")
    rows = generate_predictions(model, tokenizer, examples, max_new_tokens=config.max_new_tokens,
                                batch_size=config.batch_size, evaluation=evaluation)
    scores = rewards.score([row["prompt"] for row in rows], [row["output"] for row in rows],
                           [example.get("record") or {} for example in examples])
    results = {"mean": _mean(scores.total)}
    record_scores("mean", scores.total, evaluation=evaluation, rows=rows)
    for key, values in scores.each.items():
        if key == "mean":
            continue
        results[key] = _mean(values)
        record_scores(key, values, evaluation=evaluation, rows=rows)
    return results


def _mean(values) -> Optional[float]:
    """The mean of ``values``; None (no value this time) without any, never nan (the host refuses it)."""
    return sum(values) / len(values) if values else None


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [tuneforge.EvaluatorSpec(
        "reward", RewardEvaluatorConfig, "the run's rewards on held-out generations (mean, per reward)",
        evaluate=evaluate_reward,
        metrics=(tuneforge.MetricInfo("mean", higher_is_better=True, primary=True, share=False,
                                      description="mean total reward (weighted sum of the run's rewards) of greedy "
                                                  "generations for the held-out prompts"),
                 tuneforge.MetricInfo("*", higher_is_better=True, share=False,
                                      description="one reward's mean (unweighted) on the same generations")))]
