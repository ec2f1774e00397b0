"""A held-out split that keeps every label's share (``data.stratify=true``).

A classifier's records are labelled by their answer: the final assistant turn (chat, alpaca), or the
completion of a prompt/completion record (:func:`answer_label`).  :func:`stratified_split` holds out
the same share of every label, in the seeded order of the plain split: each label gets its
proportional share of the held-out count, rounded down, and the records left over go to the labels
with the largest remainders (ties: the label met first), so the held-out count is exactly the plain
split's and no label is held out whole (when labels of a single record leave the count short, the
next records of the plain order fill it).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from tuneforge.data.chat_templates import message_text


def answer_label(sample) -> Optional[str]:
    """The answer that labels a normalized record (:class:`tuneforge.data.samples.Sample`): its last
    assistant message, stripped (also when user turns follow it: the answer a held-out conversation is
    scored on); None for a record without one (completion text, preference pairs)."""
    messages = list(sample.completion or []) or list(sample.messages or [])
    answers = [m for m in messages if m.get("role") == "assistant"]
    if sample.format in ("preference", "kto") or not answers:
        return None
    return message_text(answers[-1]).strip()


def stratified_split(labels: Sequence[str], order: Sequence[int], n_val: int) -> tuple[list, list]:
    """``(train, held_out)`` indices of ``order`` (the seeded order of the records) with ``n_val`` held out,
    each label in proportion to its records (see the module doc)."""
    groups: dict = {}
    for index in order:
        groups.setdefault(labels[index], []).append(index)
    total = len(order)
    quotas = {label: len(members) * n_val / total for label, members in groups.items()}
    counts = {label: min(math.floor(quota), len(members) - 1) for (label, members), quota
              in zip(groups.items(), quotas.values())}
    left = n_val - sum(counts.values())
    for label in sorted(groups, key=lambda g: -(quotas[g] - math.floor(quotas[g]))):
        if left <= 0:
            break
        if counts[label] < len(groups[label]) - 1:
            counts[label] += 1
            left -= 1
    held = {index for label, members in groups.items() for index in members[:counts[label]]}
    for index in order:  # labels of one record each (open answers) cannot keep a share: the plain order fills up
        if len(held) >= n_val:
            break
        held.add(index)
    return [i for i in order if i not in held], [i for i in order if i in held]
