"""The pieces of a run's results that :func:`tuneforge.training.run.train` assembles after each phase:
parameter counts, training segments, the memorisation sample, the cost per column and the joined
prediction rows."""

from __future__ import annotations

import json
import random
import time
from typing import Optional

from tuneforge.evaluation.runner import run_evaluators


def count_parameters(model) -> dict:
    """``{"trainable", "total", "fraction"}`` parameter counts of ``model``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def join_predictions(base_rows: list, tuned_rows: list) -> list:
    """Add each base output (saved before training), and its scores, to the tuned row of the same prompt."""
    def key(row):
        return row["set"], row["kind"], row["source"], row["prompt"]

    base_by_key = {key(row): row for row in base_rows}
    joined = []
    for row in tuned_rows:
        base = base_by_key.get(key(row)) or {}
        scores = {**(base.get("scores") or {}), **(row.get("scores") or {})}
        joined.append(dict(row, base=base.get("base"), **({"scores": scores} if scores else {})))
    seen = {key(row) for row in tuned_rows}
    joined += [row for row in base_rows if key(row) not in seen]
    return joined


def examples_digest(examples) -> str:
    """A sha256 of tokenized examples (each one's source and token-id fields, in order): what a saved base
    evaluation was scored on, compared when a run resumes (``base_eval.json``'s ``held_out``)."""
    import hashlib

    digest = hashlib.sha256()
    for example in examples:
        fields = {key: value for key, value in example.items() if key.endswith(("input_ids", "labels"))}
        digest.update(json.dumps([example.get("source"), fields], sort_keys=True).encode())
    return digest.hexdigest()


def add_baselines(metrics: dict, baselines: dict, skipped: dict) -> None:
    """The baseline columns' metrics (``baselines``), labels (``baseline_info``) and the reasons of those
    that gave no column (``baselines_skipped``) into the run's metrics."""
    metrics["baselines"] = {key: column["metrics"] for key, column in baselines.items()}
    metrics["baseline_info"] = {key: {**(column.get("info") or {}), "name": column["name"], "label": column["label"]}
                                for key, column in baselines.items()}
    if skipped:
        metrics["baselines_skipped"] = skipped


def segment_record(segment: dict, started: float, reduce: bool = True, status: str = "completed") -> dict:
    """One start-or-resume of a run: the steps it trained, its throughput, wall time, how it ended
    (``status``) and the precision it trained in.  ``reduce``: every process calls this (the token count is
    summed over the process group)."""
    trainer = segment.get("trainer")
    summary = segment["throughput"].summary(time.time() - segment["fit_started"], trainer.world_size,
                                            reduce=reduce) if trainer is not None else {}
    return {"from_step": segment.get("started_step", 0), "to_step": int(trainer.global_step) if trainer else None,
            "wall_time_s": time.time() - started, "status": status, **summary,
            **({"precision": segment["precision"]} if segment.get("precision") else {})}


def memorisation_sample(run, model, tokenizer, splits, context, rewards=None) -> tuple:
    """The held-out evaluators on ``memorisation.sample`` training examples (drawn with the seed) with the
    tuned model: ``({"sample", "metrics", "scores"} or None, prediction rows of set "train")``.
    ``run``: the :class:`~tuneforge.host.components.RunConfig`; ``rewards``: its built rewards."""
    from tuneforge.evaluation import merge_predictions

    size = min(int(run.settings.memorisation.sample or 0), len(splits.train))
    if size <= 0:
        return None, []
    sample = random.Random(int(run.settings.seed)).sample(list(splits.train), size)
    values, one_pass = run_evaluators(run.evaluators, run.settings, model, tokenizer, sample, "tuned",
                                      chat_template=splits.chat_template, context=context, held_out_only=True,
                                      rewards=rewards)
    rows = [dict(row, set="train") for row in merge_predictions({"tuned": one_pass}) if row["set"] == "val"]
    return {"sample": size, "metrics": values, "scores": one_pass.example_scores}, rows


def column_costs(tokenizer, splits, base: dict, baselines: dict, tuned_pass, throughput: dict) -> dict:
    """Per column: prompt and completion tokens and measured generation seconds per held-out query (with
    the spread over batches); the tuned column also its training time.  ``base``: the saved base
    evaluation (``predictions``, ``timings``)."""
    from tuneforge.evaluation import merge_predictions
    from tuneforge.evaluation.baselines import prompt_tokens_per_query
    from tuneforge.evaluation.cost import column_cost

    zero_shot = prompt_tokens_per_query(tokenizer, splits.val, splits.chat_template) \
        if all(ex.get("messages") for ex in splits.val) else None
    cost = {"base": column_cost("base", zero_shot, tokenizer, base.get("predictions") or [], base.get("timings"))}
    for key, column in baselines.items():
        cost[key] = column_cost(key, column["prompt_tokens"], tokenizer, column.get("predictions") or [],
                                column["timings"])
    cost["tuned"] = dict(column_cost("tuned", zero_shot, tokenizer, merge_predictions({"tuned": tuned_pass}),
                                     tuned_pass.timings), training_s=throughput.get("fit_time_s"))
    return cost


def unsharded(model, run) -> "object":
    """The trained ``model`` (sharded by ``strategy=fsdp``) whole on every rank, for the tuned evaluation and
    ``model/``: the same model built again (model source + adapter) with the gathered full state."""
    from tuneforge.training.fsdp import unsharded_model

    def build():
        from tuneforge.training.model_io import apply_adapter, load_source_model

        base, _ = load_source_model(run.model.spec, run.model.config, run.loss.spec.model_head)
        return apply_adapter(run, base)

    return unsharded_model(model, build)


def pack_length(run) -> Optional[int]:
    """The dataset's ``max_length`` setting (the length packed rows fill), None when it has none."""
    value = getattr(run.data.config, "max_length", None)
    return int(value) if value else None
