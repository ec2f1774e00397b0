"""What each column costs per query, what training cost, and when training pays for itself.

Per column (:func:`column_cost`): prompt and completion tokens per held-out
query, and the generation seconds per query measured on every generated batch
(the median, and the range over batches: each batch is one repeat of the
timing, so a slow first batch cannot stand for the whole column).

For the decision (:func:`decision_cost`): the best prompting column against
the tuned model on the verdict's metric:

* ``gain_share``: the share of the tuned model's gain over zero-shot that the
  prompting column reaches (the "RAG gets 80% of the benefit" rule of thumb,
  checked on the user's own data);
* ``query_cost_ratio``: its cost per query relative to the tuned model's;
* ``break_even_queries``: after how many queries the training cost is paid
  back by the cheaper queries of the tuned model (None when the tuned model
  is not cheaper per query), with the range from the timing spread.

``gain_share`` and the break-even are left out when training gained nothing
over zero-shot on the verdict's metric (:func:`tuned_gain`: the tuned value
is not better): there is no gain to share or to pay back.  The break-even is
also left out when the prompting column scores better than the tuned model
(``column_better``): cheaper queries of a worse model do not pay for training.

Costs are in seconds of this machine unless prices are set
(``evidence.price_per_hour``: machine time; ``evidence.price_per_million_tokens``:
serving by tokens).
"""

from __future__ import annotations

import statistics
from typing import Optional, Sequence

BASE, TUNED = "base", "tuned"


def generation_timing(timings: Optional[dict], set_name: str = "val") -> dict:
    """``{"s_per_query", "low", "high", "batches"}`` of one pass's generation on ``set_name``: the median
    seconds per prompt over the generated batches and their range (the total over the prompts when no
    batch was timed); empty when nothing was generated."""
    timing = (timings or {}).get(set_name) or {}
    rates = [float(r) for r in timing.get("batch_s_per_query") or ()]
    if rates:
        return {"s_per_query": statistics.median(rates), "low": min(rates), "high": max(rates),
                "batches": len(rates)}
    if timing.get("queries"):
        rate = float(timing["seconds"]) / int(timing["queries"])
        return {"s_per_query": rate, "low": rate, "high": rate, "batches": 1}
    return {}


def completion_tokens_per_query(tokenizer, rows: Sequence[dict], column: str) -> Optional[float]:
    """Mean token count of column ``column``'s generated held-out outputs in ``rows`` (the side-by-side
    prediction rows of :func:`tuneforge.evaluation.merge_predictions`); None without any."""
    outputs = [r.get(column) for r in rows
               if r.get("set") == "val" and r.get("kind") == "generation" and isinstance(r.get(column), str)]
    if not outputs:
        return None
    return sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs) / len(outputs)


def column_cost(column: str, prompt_tokens: Optional[float], tokenizer, rows: Sequence[dict],
                timings: Optional[dict]) -> dict:
    """One column's cost per held-out query: tokens in and out, and the generation time with its spread."""
    timing = generation_timing(timings)
    return {"prompt_tokens_per_query": prompt_tokens,
            "completion_tokens_per_query": completion_tokens_per_query(tokenizer, rows, column),
            "generation_s_per_query": timing.get("s_per_query"),
            "generation_s_range": [timing["low"], timing["high"]] if timing else None,
            "timed_batches": timing.get("batches", 0)}


def _per_query(entry: dict, prices: dict, which: str = "s_per_query") -> Optional[float]:
    """A column's cost of one query in the decision's unit (money when priced, else seconds)."""
    if prices.get("price_per_million_tokens") is not None:
        tokens = (entry.get("prompt_tokens_per_query") or 0) + (entry.get("completion_tokens_per_query") or 0)
        return tokens * float(prices["price_per_million_tokens"]) / 1e6 if tokens else None
    seconds = entry.get("generation_s_per_query")
    if seconds is None:
        return None
    if which != "s_per_query" and entry.get("generation_s_range"):
        seconds = entry["generation_s_range"][0 if which == "low" else 1]
    return seconds * float(prices["price_per_hour"]) / 3600 if prices.get("price_per_hour") is not None \
        else seconds


def _training(entry: dict, prices: dict) -> Optional[float]:
    seconds = entry.get("training_s")
    if seconds is None:
        return None
    return seconds * float(prices["price_per_hour"]) / 3600 if prices.get("price_per_hour") is not None \
        else float(seconds)


def decision_cost(metrics: dict, verdict: dict, prices: Optional[dict] = None) -> Optional[dict]:
    """The cost side of the verdict (see the module doc); None without a compared prompting column."""
    prices = {k: v for k, v in (prices or {}).items() if v is not None}
    cost = metrics.get("cost") or {}
    column = verdict.get("baseline")
    if verdict.get("outcome") == "no_comparison" or column is None or TUNED not in cost or column not in cost:
        return None
    tuned, other = cost[TUNED], cost[column]
    unit = "money" if prices else "seconds"
    out: dict = {"column": column, "unit": unit, "prices": prices,
                 "training": _training(tuned, prices), "tuned_per_query": _per_query(tuned, prices),
                 "column_per_query": _per_query(other, prices)}
    gain = tuned_gain(metrics, verdict)
    if gain and column != BASE:  # the zero-shot base reaches none of the gain by definition
        out["gain_share"] = (verdict["baseline_value"] - metrics[BASE][verdict["metric"]]) / gain
    if out["tuned_per_query"] and out["column_per_query"] is not None:
        out["query_cost_ratio"] = out["column_per_query"] / out["tuned_per_query"]
    saving = (out["column_per_query"] - out["tuned_per_query"]) if None not in (
        out["column_per_query"], out["tuned_per_query"]) else None
    higher = verdict.get("higher_is_better", True)
    value = verdict.get("baseline_value")
    out["column_better"] = column != BASE and value is not None and (
        value > verdict["tuned"] if higher else value < verdict["tuned"])
    if out["training"] is not None and saving is not None and gain and not out["column_better"]:
        out["break_even_queries"] = int(round(out["training"] / saving)) if saving > 0 else None
        if not prices.get("price_per_million_tokens"):
            worst = _per_query(other, prices, "low") - _per_query(tuned, prices, "high")
            best = _per_query(other, prices, "high") - _per_query(tuned, prices, "low")
            out["break_even_range"] = [int(round(out["training"] / best)) if best > 0 else None,
                                       int(round(out["training"] / worst)) if worst > 0 else None]
    return out


def tuned_gain(metrics: dict, verdict: dict) -> Optional[float]:
    """Tuned minus zero-shot base on the verdict's metric when the tuned value is better (higher, or lower
    for a metric where lower is better); None when it is not, or without a base value."""
    base_value = (metrics.get(BASE) or {}).get(verdict["metric"])
    if base_value is None:
        return None
    gain = verdict["tuned"] - base_value
    better = gain > 0 if verdict.get("higher_is_better", True) else gain < 0
    return gain if better else None


def _amount(value: float, unit: str) -> str:
    return f"{value:.3g}" if unit == "money" else f"{value:.3g} s"


def cost_text(decision: Optional[dict], label: str) -> str:
    """One or two sentences: the share of the gain the prompting column reaches at what cost, and the
    break-even number of queries."""
    if not decision:
        return ""
    unit, parts = decision["unit"], []
    if decision.get("gain_share") is not None:
        ratio = decision.get("query_cost_ratio")
        cost = f" at {ratio:.2g}x the tuned model's cost per query and no training" if ratio else ""
        share = round(100 * decision["gain_share"])  # an int: never "-0"
        more = " (it scores better than the tuned model)" if decision.get("column_better") else ""
        parts.append(f"Cost: {label} reaches {share}% of the tuned gain{more}{cost}.")
    if decision.get("training") is not None:
        training = f"Training cost {_amount(decision['training'], unit)}"
        if decision.get("column_better"):
            parts.append(f"{training}; {label} scores better, so the tuned model's cheaper queries do not pay "
                         "it back.")
        elif "break_even_queries" not in decision:
            parts.append(f"{training}.")
        elif decision["break_even_queries"]:
            spread = decision.get("break_even_range") or []
            between = (f" ({spread[0]}..{spread[1]} over the timing spread)"
                       if len(spread) == 2 and None not in spread and spread[0] != spread[1] else "")
            parts.append(f"{training}; it pays back after about {decision['break_even_queries']} queries{between}.")
        else:
            parts.append(f"{training}; the tuned model is not cheaper per query, so training never pays back "
                         "in cost, only in quality.")
    return " ".join(parts)
