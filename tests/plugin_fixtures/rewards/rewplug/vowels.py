"""A third-party reward: ``vowels``, the share of a completion's letters that are vowels."""

from dataclasses import dataclass

import tuneforge


@dataclass
class VowelsConfig(tuneforge.RewardConfig):
    """weight: this reward's weight.
    letters: which letters count as vowels."""

    letters: str = "aeiou"


def build(config, context):
    def score(prompts, completions, records):
        shares = []
        for text in completions:
            letters = [c for c in text.lower() if c.isalpha()]
            shares.append(sum(c in config.letters for c in letters) / len(letters) if letters else 0.0)
        return shares

    return score


@tuneforge.hookimpl
def tuneforge_rewards():
    return [tuneforge.RewardSpec("vowels", VowelsConfig, "the share of vowels among the letters", build=build)]
