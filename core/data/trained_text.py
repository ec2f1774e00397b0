"""Which tokens of a tokenized example carry loss, shown as text.

An example's ``labels`` are its ``input_ids`` where a token is trained and
``IGNORE_INDEX`` (-100) where it is not (see :mod:`tuneforge.data`).
:func:`marked_text` decodes the example with each run of trained tokens
between markers (``[[...]]`` by default), :func:`token_counts` counts them.
``tuneforge data show`` prints the examples of a configured dataset this way,
and :func:`tuneforge.testing.assert_labels` shows a failing example so.
"""

from __future__ import annotations

from typing import Mapping

from tuneforge.data.tokenization import IGNORE_INDEX

#: the markers around a run of trained tokens in :func:`marked_text`
TRAINED_MARKS = ("[[", "]]")


def label_runs(example: Mapping, prefix: str = "") -> list:
    """``[(trained, [token ids])]``: the example's tokens split into runs of trained and untrained ones.

    ``prefix="chosen_"`` reads ``chosen_input_ids``/``chosen_labels`` of a preference example.
    """
    runs: list = []
    for token, label in zip(example[f"{prefix}input_ids"], example[f"{prefix}labels"]):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def marked_text(example: Mapping, tokenizer, prefix: str = "", marks: tuple = TRAINED_MARKS) -> str:
    """The example's text (special tokens kept) with every run of trained tokens between ``marks``.

    Each run is decoded as a whole, so a character split over several tokens
    (a byte-level tokenizer's multi-byte UTF-8) shows as itself.
    """
    opening, closing = marks
    parts = []
    for trained, tokens in label_runs(example, prefix):
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        parts.append(f"{opening}{text}{closing}" if trained else text)
    return "".join(parts)


def token_counts(example: Mapping, prefix: str = "") -> tuple:
    """``(tokens, trained tokens)`` of the example (``prefix`` as in :func:`label_runs`)."""
    labels = example[f"{prefix}labels"]
    return len(example[f"{prefix}input_ids"]), sum(label != IGNORE_INDEX for label in labels)
