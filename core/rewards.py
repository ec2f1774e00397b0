"""The run's rewards: the selected :class:`~tuneforge.specs.RewardSpec` components, built once and
combined with their weights.

A reward plugin's ``build(config, context)`` returns ``score(prompts, completions, records)``,
one number per completion; :func:`build_rewards` builds every selected reward
(``rewards=[a,b]``) and :class:`Rewards` scores completions with all of them: the total is the
sum of each reward times its ``weight``.  Every value a reward returns is checked: anything but
a finite number (a string, None, NaN, a list of the wrong length) stops the run in one line
naming the reward's plugin, its config key and what it returned.

Online objectives get the run's :class:`Rewards` as ``LossContext.rewards``; evaluators as
``evaluation.rewards`` (:class:`tuneforge.evaluation.EvaluationPass`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tuneforge.errors import PluginError


@dataclass(frozen=True)
class RewardContext:
    """What a reward's ``build`` gets besides its config.

    tokenizer: the run's tokenizer (e.g. to count tokens of a completion).
    device: where the run's model is (``"cpu"``, ``"cuda:0"``): where a reward model should run.
    run_dir: the run directory (``pathlib.Path``), or None outside a run.
    """

    tokenizer: Any = None
    device: str = "cpu"
    run_dir: Optional[Path] = None


@dataclass
class RewardScores:
    """Scores of a list of completions.

    total: the weighted sum of every reward, one per completion.
    each: ``{reward key: [unweighted score per completion]}``.
    """

    total: list
    each: dict = field(default_factory=dict)


@dataclass
class _Reward:
    key: str
    spec: Any
    weight: float
    score: Callable


class Rewards:
    """The run's selected rewards, built (:func:`build_rewards`); ``keys`` in selection order."""

    def __init__(self, rewards: Sequence[_Reward]):
        self._rewards = list(rewards)

    @property
    def keys(self) -> list:
        return [reward.key for reward in self._rewards]

    @property
    def weights(self) -> dict:
        """``{reward key: weight}``."""
        return {reward.key: reward.weight for reward in self._rewards}

    def __len__(self) -> int:
        return len(self._rewards)

    def score(self, prompts: Sequence[str], completions: Sequence[str], records: Sequence[dict]) -> RewardScores:
        """Every reward's scores of ``completions`` (each answering ``prompts[i]`` for the example whose
        source record is ``records[i]``) and their weighted sum."""
        if not len(prompts) == len(completions) == len(records):
            raise ValueError(f"Rewards.score: {len(prompts)} prompts, {len(completions)} completions and "
                             f"{len(records)} records; give one of each per completion")
        from tuneforge.host.guard import spec_call

        total = [0.0] * len(completions)
        each = {}
        for reward in self._rewards:
            values = spec_call(reward.spec, "score", reward.score, list(prompts), list(completions), list(records))
            values = checked_scores(reward, values, len(completions))
            each[reward.key] = values
            total = [t + reward.weight * v for t, v in zip(total, values)]
        return RewardScores(total=total, each=each)


def _where(reward: _Reward) -> str:
    from tuneforge.host.guard import describe_plugin, origin_of

    return f"{describe_plugin(origin_of(reward.spec))}: reward '{reward.spec.name}' (rewards.{reward.key})"


def checked_scores(reward: _Reward, values: Any, count: int) -> list:
    """``values`` as ``count`` floats, or a one-line :class:`~tuneforge.PluginError` naming the reward and
    what it returned."""
    hint = "a reward's score() must return one finite number per completion"
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise PluginError(f"{_where(reward)} returned {_shown(values)} ({type(values).__name__}) for {count} "
                          f"completions; {hint}")
    values = list(values)
    if len(values) != count:
        raise PluginError(f"{_where(reward)} returned {len(values)} scores for {count} completions; {hint}")
    for index, value in enumerate(values):
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise PluginError(f"{_where(reward)} returned {_shown(value)} ({type(value).__name__}) for completion "
                              f"{index}; {hint}")
    return [float(value) for value in values]


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def build_rewards(components: dict, context: RewardContext) -> Rewards:
    """The run's rewards from ``RunConfig.rewards`` (``{key: Component}``): each spec's ``build`` called
    with its typed config and ``context``, behind the plugin guard."""
    from tuneforge.host.guard import Returns, spec_call, type_name

    a_score = Returns(lambda result: None if callable(result) else type_name(result),
                      "a function score(prompts, completions, records)")
    built = []
    for key, component in components.items():
        spec = component.spec
        score = spec_call(spec, "build", spec.build, component.config, context, returns=a_score)
        built.append(_Reward(str(key), spec, float(component.config.weight), score))
    return Rewards(built)
