"""``tuneforge eval``: the evaluators on a finished run (base vs tuned) or on a bare base model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from tuneforge.evaluation.comparison import check_evidence_metric, evidence_options, summarize
from tuneforge.evaluation.metrics_file import RunMetrics, read_metrics
from tuneforge.evaluation.runner import describe_metrics, run_evaluators
from tuneforge.host.components import MULTIPLE_GROUPS, SINGLE_GROUPS
from tuneforge.training.model_io import load_run_data, load_saved_model, load_source_model
from tuneforge.training.run_dir import write_outputs
from tuneforge.training.setup_summary import describe_setup


def evaluate(cfg: DictConfig, plugins, run_dir: Optional[Path] = None, out_dir: Optional[Path] = None) -> RunMetrics:
    """Evaluators on the held-out split of ``cfg.data``, without training.

    The base model (``cfg.model``) is always scored; with ``run_dir`` the
    run's trained weights (``<run_dir>/model``) are loaded on top and scored
    as ``tuned``, and the prompting baselines (``baselines``, the run's unless overridden) run on the base
    model first, so the verdict weighs tuning against prompting as the run's own did; every metric with
    per-example scores gets its interval (``intervals``, ``changes``).
    With ``out_dir`` it receives ``metrics.json``,
    ``predictions.jsonl`` and the report.  ``cfg`` is validated first.
    """
    from tuneforge.host.components import run_components

    components = run_components(cfg, plugins)
    cfg, settings = components.config, components.settings
    check_evidence_metric(settings, components.evaluators)  # before any model loads
    if run_dir is not None:  # the run's data files must hold what it trained on (training/data_files.py)
        import logging

        from tuneforge.training.data_files import check_run_data, data_file_hashes

        change = check_run_data(Path(run_dir), data_file_hashes(components), settings.allow_changed_data)
        if change:
            logging.getLogger("tuneforge").warning("evaluating on changed data (allow_changed_data=true): %s",
                                                   change)

    import torch

    from tuneforge.context import evaluation_device
    from tuneforge.evaluation import merge_predictions

    started = time.time()
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    torch.manual_seed(settings.seed)

    head = components.loss.spec.model_head  # the head the run's loss trained (tuneforge.model_heads)
    model, tokenizer = load_source_model(components.model.spec, components.model.config, head)
    splits = load_run_data(components, tokenizer)
    metrics: RunMetrics = {"data": splits.stats}
    metrics["setup"] = describe_setup(components, splits.stats, with_adapter=run_dir is not None,
                                      device=evaluation_device(settings.trainer.accelerator,
                                                               settings.trainer.devices, 0))
    if run_dir is not None:
        metrics["setup"].update(run_dir=str(run_dir), **_training_record(Path(run_dir)))
    from tuneforge.rewards import RewardContext, build_rewards

    rewards = build_rewards(components.rewards, RewardContext(tokenizer=tokenizer, device=str(
        next(model.parameters()).device), run_dir=None if run_dir is None else Path(run_dir))) \
        if components.rewards else None
    metrics["base"], base_pass = run_evaluators(components.evaluators, settings, model, tokenizer, splits.val, "base",
                                                chat_template=splits.chat_template, rewards=rewards)
    tuned_pass, baselines = None, {}
    if run_dir is not None:  # the prompting baselines, on the base model before the trained weights go on it
        from tuneforge.commands.run_loading import run_adapter_spec
        from tuneforge.evaluation.baselines import run_baselines
        from tuneforge.training.run_results import add_baselines

        baselines, skipped = run_baselines(components.baselines, components.evaluators, settings, model, tokenizer,
                                           splits, retrievers=plugins["retriever"], rewards=rewards)
        add_baselines(metrics, baselines, skipped)
        model = load_saved_model(run_adapter_spec(run_dir, cfg, plugins), model, Path(run_dir) / "model",
                                 trust_remote_code=bool(getattr(components.model.config, "trust_remote_code", False)),
                                 head=head)
        metrics["tuned"], tuned_pass = run_evaluators(components.evaluators, settings, model, tokenizer, splits.val,
                                                      "tuned", chat_template=splits.chat_template, rewards=rewards)
    metrics["metric_info"] = describe_metrics(components.evaluators, metrics)
    summarize(metrics, {"base": base_pass.example_scores, "tuned": tuned_pass.example_scores if tuned_pass else {},
                        **{key: column["scores"] for key, column in baselines.items()}},
              seed=int(settings.seed), **evidence_options(components.settings, splits.val))
    metrics["wall_time_s"] = time.time() - started
    if out_dir is not None:
        from tuneforge.evaluation.baselines import join_columns

        predictions = join_columns(merge_predictions({"base": base_pass, "tuned": tuned_pass}), baselines)
        write_outputs(Path(out_dir), cfg, metrics, predictions, title="tuneforge evaluation report")
    return metrics


def _selects_baselines(override: str) -> bool:
    """True for an override that selects or configures prompting baselines (``baselines=[few_shot]``,
    ``baselines.few_shot.k=8``); turning them off (``baselines=[]``, ``~baselines``) is not."""
    key, _, value = override.partition("=")
    if key.lstrip("+~").split(".")[0] != "baselines" or key.startswith("~"):
        return False
    return key.lstrip("+") != "baselines" or value.strip() not in ("[]", "null", "")


def _training_record(run_dir: Path) -> dict:
    """``steps``, ``training_s`` and the ``machine`` it trained on, of the run whose model is evaluated, from
    its ``metrics.json`` (empty when the run has none, e.g. an interrupted one; a file this tuneforge cannot
    read is a one-line :class:`~tuneforge.evaluation.metrics_file.MetricsFileError`)."""
    try:
        saved = read_metrics(run_dir)
    except OSError:
        return {}
    record = {"steps": saved.get("steps"), "training_s": saved.get("throughput", {}).get("fit_time_s"),
              "machine": saved.get("setup", {}).get("machine")}
    return {key: value for key, value in record.items() if value is not None}


def _run_lock(run_dir: Optional[Path], out_dir: Optional[Path]):
    """The run directory's lock when ``tuneforge eval`` writes into it (``out`` inside ``run_dir``),
    else a no-op: a run that is still training is never written into by eval."""
    import contextlib

    from tuneforge.training.run_lock import RunLock

    if run_dir is None or out_dir is None:
        return contextlib.nullcontext()
    run, out = Path(run_dir).resolve(), Path(out_dir).resolve()
    return RunLock(run, "eval") if run == out or run in out.parents else contextlib.nullcontext()


def check_out_writable(out_dir: Path, run_dir: Optional[Path]) -> None:
    """One line, before anything is loaded, when the results cannot be written to ``out_dir``: its nearest
    existing folder is on a read-only file system or not writable by this user (a run directory on a
    read-only mount, where the default ``out`` is ``<run_dir>/eval``); it suggests ``out=<a writable folder>``."""
    from tuneforge.errors import ConfigError
    from tuneforge.training.run_lock import nearest_existing, why_not_writable

    out = Path(out_dir).absolute()
    existing = nearest_existing(out)
    if not existing.is_dir():
        return  # a file in the way: said when the results are written
    why = why_not_writable(existing)
    if why is None:
        return
    run = None if run_dir is None else Path(run_dir).absolute()
    where = f"run_dir={run}" if run is not None and (existing == run or run in existing.parents) else str(existing)
    raise ConfigError(f"tuneforge eval cannot write its results to out={out}: {where} {why}; give out=<a writable "
                      "folder> to write them elsewhere")


def run_config(run_dir: Path, overrides: list, force: bool = False) -> DictConfig:
    """The saved config of a finished run, with ``overrides`` applied on top (validated by :func:`evaluate`).

    Group choices (``model``, ``data``, ``adapter``, ``loss``, ``optimizer``, ``evaluators`` ...)
    default to the run's (a run saved before a group existed gets that group's default);
    ``evaluators=[...]`` replaces the run's evaluators (those it selects again keep the run's settings,
    :func:`_reselected_settings`) and ``key=value`` overrides win over the saved values.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tuneforge.host.compose import compose

    from tuneforge.commands.run_loading import read_run_config

    # eval may look at an interrupted run's last model too; a failed run's, or a model/ that config.yaml
    # did not train, only with force=true
    saved = read_run_config(run_dir, force=force, allow_interrupted=True)
    _drop_retired_settings(saved)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups = {*SINGLE_GROUPS, *MULTIPLE_GROUPS, "trainer", "strategy"}
    chosen = {o.key_or_group for o in parsed if o.key_or_group in groups}
    from tuneforge.commands.run_loading import plugins_for_run

    check_saved_components(run_dir, saved, chosen, plugins_for_run(saved))
    choices = [f"{g}={saved[g].name}" for g in SINGLE_GROUPS if g not in chosen and g in saved]
    for group in MULTIPLE_GROUPS:  # the run's own selection, so that its settings merge onto the same components
        if group not in chosen:
            choices.append(f"{group}=[{','.join(saved.get(group) or {})}]")
    composed = compose([*choices, *overrides])

    kept = {k: v for k, v in saved.items() if k not in chosen and k in composed}
    kept.update(_reselected_settings(saved, composed, chosen))
    with open_dict(composed):  # a saved dict-valued field (e.g. targets' checks) may hold keys the defaults lack
        final = OmegaConf.merge(composed, kept)
    OmegaConf.set_struct(final, True)
    for override in parsed:  # hydra.* (hydra.searchpath, from --config-dir) is Hydra's, not the run's
        if (override.key_or_group not in groups and not override.is_delete()
                and not override.key_or_group.startswith("hydra.")):
            OmegaConf.update(final, override.key_or_group, OmegaConf.select(composed, override.key_or_group),
                             merge=False)
    return final


def _reselected_settings(saved: DictConfig, composed: DictConfig, chosen: set) -> dict:
    """The run's saved settings of the components an override selects again: ``evaluators=[exact_match,forgetting]``
    keeps the run's ``evaluators.forgetting`` settings (its reference set) when the run had it, ``model=hf``
    the run's model settings when it was ``hf``; a component the run did not have gets its defaults."""
    kept: dict = {}
    for group in chosen & set(MULTIPLE_GROUPS):
        again = {key: saved[group][key] for key in (composed.get(group) or {}) if key in (saved.get(group) or {})}
        if again:
            kept[group] = again
    for group in chosen & set(SINGLE_GROUPS):
        node = saved.get(group)
        if node is not None and composed.get(group) is not None and node.get("name") == composed[group].get("name"):
            kept[group] = node
    return kept


def _drop_retired_settings(saved: DictConfig) -> None:
    """Settings of the run's saved ``config.yaml`` that this tuneforge no longer has (a run trained by an
    older release): left out with a log line, so the run can still be evaluated (a key typed on the command
    line is checked on its own, and refused as a typo)."""
    import logging

    from tuneforge.host.config_checks import unknown_key_problems

    for problem in unknown_key_problems(saved):
        parent, _, leaf = problem.key.rpartition(".")
        node = OmegaConf.select(saved, parent) if parent else saved
        if node is not None and leaf in node:
            with open_dict(node):
                del node[leaf]
            logging.getLogger("tuneforge").warning("%s in the run's config.yaml is not a setting of this "
                                                   "tuneforge (an older release's?): left out", problem.key)


#: group -> how to do without a stored component whose plugin is gone
_WITHOUT = {"evaluators": "or choose others with evaluators=[...]",
            "callbacks": "or evaluate without the run's callbacks: callbacks=[]",
            "loggers": "or evaluate with other loggers: loggers=[csv]",
            "baselines": "or evaluate without the run's baselines: baselines=[]",
            "data": "or evaluate other data with data=<name> data.path=..."}


def check_saved_components(run_dir: Path, saved, chosen: set, plugins) -> None:
    """One-line error when a component stored in the run's config.yaml (and not replaced by an
    override) is provided by no installed plugin, e.g. a third-party callback since uninstalled."""
    from tuneforge.errors import ConfigError

    for group in (*SINGLE_GROUPS, *MULTIPLE_GROUPS):
        node = saved.get(group)
        if group in chosen or not node:
            continue
        entries = node.items() if group in MULTIPLE_GROUPS else [(None, node)]
        for key, entry in entries:
            name = entry.get("name") if hasattr(entry, "get") else None
            if name is None or name in plugins[group].names():
                continue
            where = f"{group}.{key}" if key is not None else f"{group}.name"
            kind = plugins[group].spec_class.kind
            raise ConfigError(
                f"run_dir={run_dir} was trained with {kind} '{name}' ({where} in {Path(run_dir) / 'config.yaml'}), "
                f"which no installed plugin provides (installed: {', '.join(plugins[group].names()) or 'none'}); "
                f"install the plugin that provides '{name}' again{', ' + _WITHOUT[group] if group in _WITHOUT else ''}")


EVAL_USAGE = """\
usage: tuneforge eval run_dir=<dir> [out=<dir>] [key=value ...]   (or: tuneforge eval <dir> ...)
       tuneforge eval model=<source> model.path=... data.path=... [out=<dir>] [key=value ...]

Run the evaluators on the held-out split.  With run_dir, the run's base model,
its prompting baselines and its trained model/ are scored (base, baselines,
tuned, change, verdict) with the run's data, evaluator and baseline config
(baselines=[] skips the baselines); overrides such as evaluators=[exact_match,rouge] or
data.val_path=held_out.jsonl change it.  Without run_dir a bare model is
scored.  Results go to out (default <run_dir>/eval; none for a bare model):
metrics.json, predictions.jsonl, report.md, report.html; give out=<a writable
folder> for a run directory you cannot write to.  A run that failed, or
whose model/ was saved with another config than its config.yaml, is refused
unless force=true.
"""


def eval_command(args: list) -> None:
    """``tuneforge eval``: evaluators on a finished run or on a bare base model."""
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.host.paths import argument_path
    from tuneforge.evaluation.report import format_comparison

    run_dir, out_dir, overrides, force = None, None, [], False
    for arg in args:
        if arg in ("-h", "--help"):
            print(EVAL_USAGE, end="")
            return
        if arg.startswith("force="):
            from tuneforge.commands.key_values import parse_bool

            try:
                force = parse_bool(arg.split("=", 1)[1])
            except ValueError as exc:
                from tuneforge.errors import ConfigError

                raise ConfigError(f"force: {exc}") from None
        elif arg.startswith("run_dir="):  # quoted as train takes it ('run_dir="/runs/a b"') or not
            run_dir = Path(argument_path(arg.split("=", 1)[1]))
        elif arg.startswith("out="):
            out_dir = Path(argument_path(arg.split("=", 1)[1]))
        elif "=" not in arg and run_dir is None and Path(arg).is_dir():  # as compare and status take it
            run_dir = Path(arg)
        else:
            overrides.append(arg)
    if run_dir is None and any(_selects_baselines(o) for o in overrides):
        from tuneforge.errors import ConfigError

        raise ConfigError("baselines: the prompting baselines run in tuneforge eval only with run_dir=<a run> (they "
                          "are weighed against its tuned model); a bare model is scored alone")
    plugins = load_plugins(overrides)
    cfg = run_config(run_dir, overrides, force=force) if run_dir else compose(overrides)
    if out_dir is None and run_dir is not None:
        out_dir = run_dir / "eval"
    if out_dir is not None:
        check_out_writable(out_dir, run_dir)
    with _run_lock(run_dir, out_dir):
        metrics = evaluate(cfg, plugins, run_dir, out_dir)
    print(format_comparison(metrics))
    if out_dir is not None:
        print(f"report: {out_dir / 'report.md'}")
