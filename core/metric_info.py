"""How an evaluator's metrics are described to the report and ``tuneforge compare``
(:class:`MetricInfo`, public as ``tuneforge.MetricInfo`` and ``tuneforge.specs.MetricInfo``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


#: the :attr:`MetricInfo.section` of metrics on the held-out split (the report's first table)
HELD_OUT = "held-out"
#: the :attr:`MetricInfo.section` of metrics of general ability that tuning must not lose (a forgetting
#: set): the verdict compares tuned with base on them, and a significant drop, or one beyond
#: ``evidence.forgetting_limit``, turns "tune" into "tune, at a cost"
GENERAL_ABILITY = "forgetting"


@dataclass(frozen=True)
class MetricInfo:
    """What one metric of an evaluator means, for the report and ``tuneforge compare``.

    ``name``: the key the evaluator's ``evaluate`` returns (``"loss"``, not
        ``"perplexity/loss"``).
    ``higher_is_better``: the direction of improvement.
    ``primary``: a headline metric; when any metric of a run is primary,
        ``compare`` plots only the primary ones.
    ``section``: the report groups metrics by it (free text; ``"held-out"`` is
        the held-out split's table, anything else gets a table of its own;
        ``"forgetting"`` (:data:`GENERAL_ABILITY`) marks general ability that the
        verdict weighs as the cost of tuning).
    ``description``: one line shown under the section's table.
    ``is_loss``: a held-out loss; the report's overfitting signal compares the
        first such metric of section ``"held-out"`` with the training loss when
        no validation ran during training.
    ``share``: whether the metric is a share of examples (an accuracy, a rate),
        shown as a percentage with changes and the verdict's margin in points.
        None (the default): inferred (every column's value between 0 and 1, higher
        better, not a loss); False for a score on its own scale that may happen to
        lie between 0 and 1 (a mean reward); True to insist.
    """

    name: str
    higher_is_better: bool = True
    primary: bool = False
    section: str = HELD_OUT
    description: str = ""
    is_loss: bool = False
    share: Optional[bool] = None

    def as_dict(self) -> dict:
        """The fields besides ``name``, as saved under ``metric_info`` in ``metrics.json`` (``share`` only when
        the evaluator declared it: undeclared, it is inferred from the values)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and not (f.name == "share" and self.share is None)}
