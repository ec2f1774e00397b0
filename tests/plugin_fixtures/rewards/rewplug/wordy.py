"""An author's mistake: the ``wordy`` reward returns words ("high"/"low") instead of numbers."""

from dataclasses import dataclass

import tuneforge


@dataclass
class WordyConfig(tuneforge.RewardConfig):
    """weight: this reward's weight."""


def build(config, context):
    return lambda prompts, completions, records: ["high" if len(c) > 3 else "low" for c in completions]


@tuneforge.hookimpl
def tuneforge_rewards():
    return [tuneforge.RewardSpec("wordy", WordyConfig, "says high or low", build=build)]
