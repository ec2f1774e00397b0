"""One training run, in named phases: prepare -> start -> build -> evaluate the base model (and the
prompting baselines) -> fit -> evaluate the tuned model (memorisation sample, intervals, verdict) ->
save -> end.  Each phase is a function of this module taking the :class:`RunState` that carries the
run from one to the next.

:func:`train` is the single call site of the lifecycle hooks.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from tuneforge import memory_marks
from tuneforge.context import RunContext
from tuneforge.errors import ConfigError, PluginError, first_line
from tuneforge.evaluation.baselines import join_columns, run_baselines
from tuneforge.evaluation.comparison import evidence_options, summarize
from tuneforge.evaluation.metrics_file import RunMetrics
from tuneforge.evaluation.runner import describe_metrics, run_evaluators
from tuneforge.host import plugin_returns
from tuneforge.host.guard import guard_lightning_callback, guarded_function, origin_of, spec_call
from tuneforge.specs import call_accepting
from tuneforge.training.compiled_blocks import BlockCompiler, choose_run_compile
from tuneforge.training.loggers import build_loggers
from tuneforge.training.model_io import (apply_adapter, load_model_from_config, load_run_data, load_source_model,
                                         save_model, save_trained_outputs, shared_system_prompt)
from tuneforge.training.precision import run_precision
from tuneforge.training.run_dir import (close_killed_segments, keep_metric_history, move_earlier_outputs,
                                        prepare_run_dir, reached_step, read_status, redacted_config,
                                        report_previous_end, resolved_config_yaml, save_metric_history,
                                        segment_history, summed_throughput, write_json, write_outputs,
                                        write_running_status)
from tuneforge.training.run_lock import RunLock, ensure_writable_directory
from tuneforge.training.run_results import (add_baselines, column_costs, count_parameters, examples_digest,
                                            join_predictions, memorisation_sample, pack_length, segment_record,
                                            unsharded)
from tuneforge.training.rank_watch import watch_ranks
from tuneforge.training.run_state import RunState
from tuneforge.training.run_stop import (DiskFull, RunInterrupted, StopSignal, checkpoint_step, checkpoint_step_row,
                                         final_status, last_checkpoint, lost_ranks, mark_failed, one_line_disk_full,
                                         raise_dropped_stop, record_stop_while_preparing, signals_end_the_process,
                                         signals_stop_the_run)
from tuneforge.training.setup_summary import describe_setup
from tuneforge.training.trainer import (build_trainer, check_launch, check_strategy, shards_weights,
                                        token_counter, writes_checkpoints)

__all__ = ["DiskFull", "RunInterrupted", "RunState", "join_predictions", "run_train", "train"]

log = logging.getLogger("tuneforge")


def train(cfg: DictConfig, plugins, run_dir: Path, context: Optional[RunContext] = None,
          components=None) -> RunMetrics:
    """Run one fine-tune described by ``cfg``; returns the final metrics.

    ``context`` says which process this is (:class:`~tuneforge.RunContext`;
    detected from the cluster environment when not given).  Under DDP every
    process runs this function; only the main one (``context.is_main``)
    writes the run directory.

    ``components`` is the validated run of ``cfg``
    (:func:`tuneforge.host.components.run_components`, a
    :class:`~tuneforge.host.components.RunConfig`): the typed settings, and each
    component's spec and typed config, which the plugins receive.  It is built
    here when not given, before the run directory is made.

    The run directory receives ``config.yaml`` (resolved), ``metrics.csv``,
    ``metrics.json`` (what was tuned where: ``setup``; data quality, base,
    prompting-baseline and tuned evaluator results with intervals, cost per query, the train-vs-held-out
    memorisation check, training numbers and the verdict), ``predictions.jsonl``
    (prompt, reference, base, baseline and tuned outputs; rows of set ``train``
    for the memorisation sample), ``report.md`` / ``report.html`` with their
    plots, ``model/`` (what the adapter saved, plus the tokenizer with the
    data's chat template) and ``status.json`` (``running`` -> ``completed``,
    ``failed`` or ``interrupted``).  Then each selected callback's
    ``on_run_end`` and the ``tuneforge_run_end`` hook run.  The loggers
    selected with ``loggers=[...]`` (trackers) get the training metrics, the
    redacted config and the evaluator results; their run ids go to
    ``trackers.json`` and ``metrics.json`` (``trackers``).
    """
    with memory_marks.recording() as marks:
        return _train(cfg, plugins, Path(run_dir), context, components, marks)


def _train(cfg: DictConfig, plugins, run_dir: Path, context: Optional[RunContext], components, marks) -> RunMetrics:
    """:func:`train`'s phases, with ``marks`` the run's active :class:`~tuneforge.memory_marks.MemoryMarks`."""
    state = _new_state(cfg, plugins, run_dir, context, components)
    state.memory = marks
    stop_on_signals = signals_stop_the_run()
    stop_on_signals.__enter__()
    try:
        prepare(state)
    except (StopSignal, KeyboardInterrupt) as stop:  # before the run started: no hooks, the lock is released
        stop_on_signals.__exit__(None, None, None)
        raise _interrupted_while_preparing(state, stop) from None
    except BaseException:
        stop_on_signals.__exit__(None, None, None)
        raise
    try:
        for phase in (start, build, evaluate_base, fit, evaluate_tuned, save):
            raise_dropped_stop()  # a stop signal whose exception Python dropped in the phase before
            phase(state)
        state.status = "completed"
        return state.metrics
    except (StopSignal, KeyboardInterrupt) as stop:
        raise _interrupted(state, stop) from None
    except Exception as exc:
        lost = lost_ranks(exc, state.context, state.phase, state.timeout_s, state.rank_watch)
        failure = one_line_disk_full(exc, state.run_dir) or lost
        state.error = first_line(failure or exc)
        if lost is None and state.rank_watch is not None:  # this rank's own error: the others name it
            state.rank_watch.post_stopped(state.error)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        stop_on_signals.__exit__(None, None, None)
        end(state)


def _new_state(cfg, plugins, run_dir: Path, context: Optional[RunContext], components) -> RunState:
    """The run's state before its first phase: the validated run (built when not given) and the context."""
    if components is None:
        from tuneforge.host.components import run_components

        components = run_components(cfg, plugins)
    if context is None:
        context = RunContext.detect(run_dir, components.config)
    elif context.run_dir != run_dir:
        raise ValueError(f"the run context is for {context.run_dir}, not {run_dir}")
    return RunState(run=components, plugins=plugins, run_dir=run_dir, context=context)


# ---------------------------------------------------------------------------
# prepare: checks, the lock, the run directory, the ranks' agreement
# ---------------------------------------------------------------------------


def prepare(state: RunState) -> None:
    """Everything decided before any model loads: the process count and strategy are checked, the
    processes of a cluster launch meet, the main process locks and prepares the run directory
    (resume, ``config.yaml``, ``status.json`` running), and every rank agrees that all could start."""
    settings, context = state.settings, state.context
    check_launch(context, settings.trainer)  # the processes started against trainer.devices, before any model loads
    check_strategy(settings.strategy, settings.trainer, settings.checkpoint)
    if context.is_main:  # the memory estimate of `tuneforge plan`: a warning when it will not fit, never a stop
        from tuneforge.planning.plan import warn_if_it_will_not_fit

        warn_if_it_will_not_fit(state.run)
    (log.info if context.world_size > 1 else log.debug)("process: %s", context.describe())
    from tuneforge.training.rank_agreement import meet_ranks, meets_before_collectives

    # processes started by a cluster launcher meet first, so that a failure of rank 0 alone (the lock, the
    # run directory) stops every rank at once instead of leaving them in init_process_group
    if meets_before_collectives(settings.strategy, context):
        state.phase = "waiting for the other ranks to start"
        with signals_end_the_process():  # the rendezvous blocks in C code
            state.meeting = meet_ranks(context, state.timeout_s)
    state.phase = "preparing the run directory"
    try:
        _prepare_run_dir(state)
    except BaseException as exc:
        _release_lock(state)
        failure = one_line_disk_full(exc, state.run_dir)
        if state.meeting is not None:  # tell the other ranks before leaving (they stop too, naming this rank)
            import contextlib

            with contextlib.suppress(Exception):  # this rank's own error is the one to report
                state.meeting.agree(failure=(str(failure or exc).splitlines() or [type(exc).__name__])[0])
        if failure is not None:
            raise failure from exc
        raise
    if state.meeting is not None:
        state.phase = "waiting for the other ranks to start"
        try:
            state.meeting.agree()  # raises (one line) when another rank could not start
        except BaseException:
            _release_lock(state)
            raise


def _prepare_run_dir(state: RunState) -> None:
    """The lock, the checkpoint to resume from and the run directory's first files (main process)."""
    import torch

    from tuneforge.training.data_files import DATA_FILES_FILE, data_file_hashes

    settings, run_dir, cfg = state.settings, state.run_dir, state.run.config
    if state.context.is_main:  # one writer per run directory: a second run on it stops here, naming the holder
        ensure_writable_directory(run_dir)
        state.lock = RunLock(run_dir, "train").acquire()
        report_previous_end(run_dir, read_status(run_dir))
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    state.data_files = data_file_hashes(state.run)  # content of every declared data file
    state.resume_from = prepare_run_dir(cfg, run_dir, world_size=state.context.world_size,
                                        data_files=state.data_files)
    if state.context.is_main:
        # resume=never, or nothing to resume from although an earlier run trained: its outputs go to previous-<n>/
        move_earlier_outputs(settings.resume, run_dir, resuming=state.resume_from is not None)
    if state.resume_from is not None and not writes_checkpoints(settings.strategy):
        from tuneforge.training.checkpoint import CheckpointError

        raise CheckpointError(f"strategy={settings.strategy.name} cannot resume tuneforge's checkpoint "
                              f"{state.resume_from}; resume=never starts over, or resume it with strategy=ddp")
    state.resumed_step = checkpoint_step(state.resume_from)
    # a segment still marked running was killed (SIGKILL, a crash): recorded as interrupted, with its steps
    if state.resume_from is not None:
        state.earlier_segments = close_killed_segments(segment_history(run_dir),
                                                       reached_step(run_dir, state.resumed_step))
    if state.context.is_main:
        # the rows before the checkpoint, kept before Lightning's CSV logger starts metrics.csv afresh
        save_metric_history(run_dir, state.resumed_step, checkpoint_step_row(state.resume_from))
        (run_dir / "config.yaml").write_text(resolved_config_yaml(cfg))
        write_json(run_dir / DATA_FILES_FILE, {"files": state.data_files})
        state.wrote_running = True  # (before the write: a signal may arrive right after it)
        write_running_status(run_dir, state.resume_from, state.earlier_segments, state.resumed_step)


def _release_lock(state: RunState) -> None:
    if state.lock is not None:
        state.lock.release()
        state.lock = None


# ---------------------------------------------------------------------------
# start, build: the other processes, the start hook, loggers, model, data, loss, callbacks
# ---------------------------------------------------------------------------


def start(state: RunState) -> None:
    """The other processes of a ddp/fsdp run start now (so that the base evaluation is shared out too),
    the process group forms, ``tuneforge_run_start`` runs (it may refuse the run), the seed is set and
    the loggers start (a tracker whose run cannot start stops the run before the model loads)."""
    import lightning.pytorch as pl

    from tuneforge.evaluation.sharding import init_process_group
    from tuneforge.training.launch import start_local_processes

    settings, context = state.settings, state.context
    state.phase = "starting the other processes"
    state.local_processes = start_local_processes(state.run.config, context)
    state.group_started = str(settings.strategy.name) in ("ddp", "fsdp") and init_process_group(
        context, store=state.meeting.store if state.meeting is not None else None, timeout_s=state.timeout_s)
    if state.local_processes is not None:
        state.local_processes.group_started = state.group_started
    state.rank_watch = watch_ranks(context)  # so that a rank lost mid-run is named by the others
    state.phase = "starting the run"
    # may refuse the run (a one-line error): it then ends "failed", and tuneforge_run_end still runs
    state.plugins.call_lifecycle_hook("tuneforge_run_start", config=state.run.config, run_config=state.run,
                                      run_dir=state.run_dir, context=context)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    state.loggers = build_loggers(state.run.loggers, state.run_dir, resuming=state.resume_from is not None,
                                  is_main=context.is_main)
    if context.is_main:
        state.loggers.start(redacted_config(state.run.config))


def build(state: RunState) -> None:
    """The model (source, then adapter), the data (with its quality check: serious problems stop here),
    the rewards, the loss and the plugins' callbacks."""
    from tuneforge.data import quality

    run, settings, metrics = state.run, state.settings, state.metrics
    state.phase = "loading the model"
    model, state.tokenizer = load_source_model(run.model.spec, run.model.config, run.loss.spec.model_head)
    state.model = apply_adapter(run, model)
    if settings.init_from:  # a second stage: the earlier run's trained adapter, not a fresh one
        from tuneforge.training.init_from import initialise_from_run

        initialise_from_run(state.model, run, settings.init_from)
    if settings.loader.packing:
        from tuneforge.data.packing import check_packing_support

        check_packing_support(state.model)
    state.compile = choose_run_compile(state)  # trainer.compile, refused before the data and base evaluation
    params = count_parameters(state.model)
    log.info("adapter %s: %d trainable of %d parameters (%.4f%%)", run.adapter.name, params["trainable"],
             params["total"], 100 * params["fraction"])
    metrics["parameters"] = params
    state.phase = "loading the data"
    splits = state.splits = load_run_data(run, state.tokenizer)
    metrics["data"] = splits.stats
    _check_example_kinds(state)
    metrics["setup"] = describe_setup(run, splits.stats, device=state.context.device,
                                      processes=state.context.world_size)
    metrics["data_files"] = state.data_files
    metrics["quality"] = quality.assess(splits, settings.quality.max_labels, settings.quality.identical_pair_share)
    for warning in metrics["quality"]["warnings"]:
        log.warning("data quality: %s", warning)
    quality.check(metrics["quality"], settings.quality)
    evidence_options(settings, splits.val, run.evaluators)  # a slice_by field or metric not there stops here
    if run.rewards:
        from tuneforge.rewards import RewardContext, build_rewards

        state.phase = "building the rewards"
        state.rewards = build_rewards(run.rewards, RewardContext(tokenizer=state.tokenizer, device=state.context.device,
                                                                 run_dir=state.run_dir))
    loss = run.loss.spec
    loss_fn = spec_call(loss, "build", loss.build, run.loss.config,
                        _loss_context(state.plugins, state.tokenizer, state.rewards if loss.needs_rewards else None),
                        returns=plugin_returns.loss_function())
    state.loss_fn = guarded_function(origin_of(loss), f"loss '{loss.name}', loss_fn", loss_fn,
                                     returns=plugin_returns.loss_output())
    state.callbacks = [build_callback(c.spec, c.config, state.context) for c in run.callbacks.values()
                       if c.spec.build is not None]


def _check_example_kinds(state: RunState) -> None:
    """The loss against the example kinds the data held (``stats["formats"]``), for datasets that could not
    tell them before loading (the config check did it for the others)."""
    from tuneforge.host.components import loss_kind_problem

    formats = state.splits.stats.get("formats") if isinstance(state.splits.stats, dict) else None
    loss = state.run.loss
    problem = loss_kind_problem(state.plugins, loss.name, loss.spec, list(formats) if formats else None,
                                f"data={state.run.data.name}")
    if problem:
        raise ConfigError(f"loss: {problem}")


# ---------------------------------------------------------------------------
# evaluate_base, fit, evaluate_tuned, save
# ---------------------------------------------------------------------------


def evaluate_base(state: RunState) -> None:
    """The base model zero-shot and the prompting baselines, once per run: a resumed run reuses the saved
    result (``base_eval.json``)."""
    from tuneforge.evaluation import merge_predictions

    run, metrics = state.run, state.metrics
    state.phase = "evaluating the base model"
    base_file = state.run_dir / "base_eval.json"
    saved = json.loads(base_file.read_text()) if state.resume_from is not None and base_file.is_file() else None
    held_out = examples_digest(state.splits.val)
    if saved is not None and saved.get("held_out") != held_out:  # allow_changed_data: scored on other examples
        log.warning("the held-out examples changed since the base model was scored (%s): scoring it and the "
                    "baselines again, so base and tuned are compared on the same examples", base_file)
        saved = None
    if saved is not None:
        metrics["base"], state.base_rows = saved["metrics"], saved["predictions"]
    else:
        metrics["base"], base_pass = run_evaluators(run.evaluators, state.settings, state.model, state.tokenizer,
                                                    state.splits.val, "base", chat_template=state.splits.chat_template,
                                                    context=state.context, rewards=state.rewards)
        state.base_rows = merge_predictions({"base": base_pass})
        saved = {"metrics": metrics["base"], "predictions": state.base_rows, "scores": base_pass.example_scores,
                 "timings": base_pass.timings, "held_out": held_out}
    baselines, skipped = run_baselines(run.baselines, run.evaluators, state.settings, state.model, state.tokenizer,
                                       state.splits, state.context, saved.get("baselines"),
                                       state.plugins["retriever"], rewards=state.rewards)
    saved["baselines"] = state.baselines = baselines
    state.base = saved
    if state.context.is_main:
        write_json(base_file, saved)
    add_baselines(metrics, baselines, skipped)


def fit(state: RunState) -> None:
    """``lightning.Trainer.fit`` with the run's checkpointing (resumed from ``resume_from``); an interrupt
    during training saves a checkpoint first and raises :class:`RunInterrupted`."""
    from tuneforge.training.checkpoint import run_identity
    from tuneforge.training.checkpoint_callback import CheckpointAndInterrupt

    run, settings, context, run_dir = state.run, state.settings, state.context, state.run_dir
    state.module = _fine_tune_module(state.model, state.loss_fn, settings.optim, settings.trainer.on_nonfinite_loss,
                                     run.optimizer)
    datamodule = _data_module(state.splits, state.tokenizer.pad_token_id, settings.loader, settings.seed,
                              pack_length=pack_length(run), with_records=run.loss.spec.needs_rewards)
    checkpointer = CheckpointAndInterrupt(run_dir, settings.checkpoint.every_n_steps, settings.checkpoint.keep_last,
                                          run_identity(run.config), resume_from=state.resume_from,
                                          data_files=state.data_files, requeue_job_id=context.slurm_job_id,
                                          save_checkpoints=writes_checkpoints(settings.strategy))
    throughput = token_counter()
    precision = run_precision(state)  # (tuneforge.training.precision)
    if state.compile.enabled:  # (tuneforge.training.compiled_blocks)
        state.module.block_compiler = BlockCompiler(state.compile.blocks)
    state.module.cpu_attention = settings.trainer.cpu_attention  # (tuneforge.training.matmul_attention)
    trainer = state.trainer = build_trainer(settings.trainer, settings.strategy, run_dir,
                                            [*state.callbacks, throughput, checkpointer],
                                            state.loggers.lightning_loggers(), precision=precision.precision)
    state.segment.update(started_step=state.resumed_step, throughput=throughput, fit_started=time.time(),
                         trainer=trainer, precision=precision.precision)
    state.phase = "training"
    trainer.fit(state.module, datamodule=datamodule, ckpt_path=_str(state.resume_from), **_no_pickle(trainer))
    if context.is_main:  # Lightning's CSV logger started a fresh file on resume: the earlier rows go back
        keep_metric_history(run_dir)
    metrics = state.metrics
    if checkpointer.interrupted_by:
        state.status = "interrupted"
        metrics["steps"] = int(trainer.global_step)
        raise RunInterrupted(checkpointer.interrupted_by, trainer.global_step, checkpointer.last_saved, run_dir)
    metrics["skipped_nonfinite_batches"] = state.module.skipped_batches
    segments = [*state.earlier_segments, segment_record(state.segment, state.started)]
    metrics["throughput"] = dict(summed_throughput(segments), last_segment=segments[-1])
    metrics["segments"] = segments
    metrics["train"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["steps"] = int(trainer.global_step)
    metrics["setup"].update(steps=metrics["steps"], training_s=metrics["throughput"].get("fit_time_s"))


def evaluate_tuned(state: RunState) -> None:
    """The tuned model on the held-out set and on the memorisation sample; then the cost per column, the
    intervals, changes and the verdict (:func:`~tuneforge.evaluation.comparison.summarize`)."""
    run, metrics = state.run, state.metrics
    state.phase = "evaluating the tuned model"
    if shards_weights(state.settings.strategy):  # FSDP2: every forward of the sharded model is a collective
        state.model = unsharded(state.model, run)
    metrics["tuned"], state.tuned_pass = run_evaluators(run.evaluators, state.settings, state.model,
                                                        state.tokenizer, state.splits.val, "tuned",
                                                        chat_template=state.splits.chat_template,
                                                        context=state.context, rewards=state.rewards)
    state.phase = "scoring the memorisation sample"
    memorisation, state.train_rows = memorisation_sample(run, state.model, state.tokenizer, state.splits,
                                                         state.context, rewards=state.rewards)
    metrics["metric_info"] = describe_metrics(run.evaluators, metrics)
    metrics["cost"] = column_costs(state.tokenizer, state.splits, state.base, state.baselines, state.tuned_pass,
                                   metrics["throughput"])
    scores = {"base": state.base.get("scores") or {}, "tuned": state.tuned_pass.example_scores,
              **{key: column["scores"] for key, column in state.baselines.items()}}
    summarize(metrics, scores, seed=int(state.settings.seed), memorisation=memorisation,
              **evidence_options(state.settings, state.splits.val),
              flag_gap=float(state.settings.memorisation.flag_gap))
    metrics["wall_time_s"] = sum(float(s.get("wall_time_s") or 0) for s in state.earlier_segments) \
        + time.time() - state.started


def save(state: RunState) -> None:
    """The main process saves ``model/``, ``metrics.json``, ``predictions.jsonl`` and the report, and hands
    the results to the loggers."""
    from tuneforge.evaluation import merge_predictions

    state.phase = "saving the results"
    if not state.context.is_main:
        return
    metrics, splits = state.metrics, state.splits
    metrics["trackers"] = state.loggers.record()
    state.loggers.log_results(metrics, step=metrics["steps"])
    save_model(state.run.adapter.spec, state.model, state.tokenizer, state.run_dir / "model",
               chat_template=splits.chat_template, config=state.run.config,
               system_prompt=shared_system_prompt(splits.train))
    save_trained_outputs(state.run, state.plugins, state.model, state.tokenizer, state.run_dir,
                         chat_template=splits.chat_template)
    state.memory.mark("saving the model")
    metrics["memory"] = state.memory.record()
    predictions = join_predictions(state.base_rows, merge_predictions({"tuned": state.tuned_pass}))
    predictions = join_columns(predictions, state.baselines) + state.train_rows
    write_outputs(state.run_dir, state.run.config, metrics, predictions, metrics_csv=state.run_dir / "metrics.csv")


# ---------------------------------------------------------------------------
# end: however the run ended
# ---------------------------------------------------------------------------


def _interrupted(state: RunState, stop: BaseException) -> RunInterrupted:
    """The :class:`RunInterrupted` of a SIGTERM/SIGINT outside the training loop, in ``state.phase``."""
    name = stop.signal_name if isinstance(stop, StopSignal) else "SIGINT"
    state.status = "interrupted"
    step = int(state.trainer.global_step) if state.trainer is not None else checkpoint_step(state.resume_from)
    interrupted = RunInterrupted(name, step, last_checkpoint(state.run_dir) or state.resume_from, state.run_dir,
                                 phase=state.phase)
    state.error = str(interrupted)
    return interrupted


def _interrupted_while_preparing(state: RunState, stop: BaseException) -> RunInterrupted:
    """SIGTERM/SIGINT while the run was being prepared (waiting for the other ranks, locking, hashing the data,
    deciding the resume): the one line with the phase, and ``status.json`` interrupted with it
    (:func:`~tuneforge.training.run_stop.record_stop_while_preparing`)."""
    interrupted = _interrupted(state, stop)
    if state.context.is_main:
        record_stop_while_preparing(state)
    _release_lock(state)
    return interrupted


def end(state: RunState) -> None:
    """However the run ended: the loggers finish, ``status.json`` gets the outcome, each callback's
    ``on_run_end`` and the ``tuneforge_run_end`` hook run (a failure there marks a completed run failed),
    the processes this run started finish, the process group ends and the lock is released."""
    context, run_dir = state.context, state.run_dir
    end_error = None
    try:
        if state.loggers is not None and context.is_main:
            state.loggers.finish(state.status)
        if context.is_main:
            _write_final_status(state)
        try:
            _run_end_hooks(state)
        except PluginError as exc:  # the run's outputs stand; status.json says why the command failed
            end_error = exc
            if context.is_main and state.status == "completed":
                mark_failed(run_dir, str(exc))
            raise
        finally:
            _stop_processes(state, ok=state.status == "completed" and end_error is None)
    finally:
        _release_lock(state)


def _write_final_status(state: RunState) -> None:
    segments = state.metrics.get("segments") or [
        *state.earlier_segments,
        *([segment_record(state.segment, state.started, False, state.status)] if state.segment else [])]
    phase = {"phase": state.phase} if state.status == "interrupted" else {}  # what it was doing when stopped
    final_status(state.run_dir, {"status": state.status, "error": state.error, "steps": state.metrics.get("steps"),
                                 "resumed_from": _str(state.resume_from), "wall_time_s": time.time() - state.started,
                                 "segments": segments, **phase})


def _run_end_hooks(state: RunState) -> None:
    for callback in state.run.callbacks.values():
        if callback.spec.on_run_end is not None:
            spec_call(callback.spec, "on_run_end", call_accepting, callback.spec.on_run_end,
                      config=callback.config, metrics=state.metrics, status=state.status, run_dir=state.run_dir,
                      context=state.context)
    state.plugins.call_lifecycle_hook("tuneforge_run_end", config=state.run.config, run_config=state.run,
                                      run_dir=state.run_dir, status=state.status, metrics=state.metrics,
                                      context=state.context)


def _stop_processes(state: RunState, ok: bool) -> None:
    if state.rank_watch is not None:
        state.rank_watch.close()
    if state.local_processes is not None:
        state.local_processes.finish(ok=ok)
    elif state.group_started:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------


def run_train(cfg, plugins, run_dir: Optional[str] = None, context=None, components=None) -> RunMetrics:
    """Validate ``cfg`` (unless its ``components`` from :func:`~tuneforge.host.components.run_components`
    are given) and train into ``cfg.run_dir`` (else ``run_dir``); ``context``: the
    :class:`~tuneforge.RunContext` of this process, detected by ``train`` when None."""
    from tuneforge.host.components import run_components

    components = components if components is not None else run_components(cfg, plugins)
    target = components.settings.run_dir or run_dir
    if not target:
        raise ConfigError("no run directory: set run_dir=<dir>")
    return train(components.config, plugins, Path(target), context=context, components=components)


def build_callback(spec, config, context: RunContext):
    """``spec.build(config, context)`` when ``build`` takes a second parameter, else ``spec.build(config)``
    (:func:`tuneforge.specs.call_accepting`); the Lightning callback it returns runs each of its hooks behind
    the plugin guard (:func:`tuneforge.host.guard.guard_lightning_callback`)."""
    callback = spec_call(spec, "build", call_accepting, spec.build, config, optional_args=(context,),
                         returns=plugin_returns.lightning_callback())
    return guard_lightning_callback(callback, origin_of(spec), f"callback '{spec.name}'")


def _no_pickle(trainer) -> dict:
    """``weights_only=True`` where Lightning accepts it (>= 2.5); SafeCheckpointIO never unpickles anyway."""
    import inspect

    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def _str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def _loss_context(plugins, tokenizer, rewards=None):
    from tuneforge.losses import LossContext

    return LossContext(tokenizer=tokenizer, load_model=lambda model_config: load_model_from_config(
        plugins, model_config, key="loss.teacher"), rewards=rewards)


def _fine_tune_module(model, loss_fn, optim_cfg, on_nonfinite_loss: str = "stop", optimizer=None):
    from tuneforge.training.module import FineTuneModule

    return FineTuneModule(model, loss_fn, optim_cfg, on_nonfinite_loss, optimizer=optimizer)


def _data_module(splits, pad_token_id, loader_cfg, seed, pack_length=None, with_records=False):
    from tuneforge.training.data_module import FineTuneDataModule

    return FineTuneDataModule(splits, pad_token_id, loader_cfg, seed, pack_length=pack_length,
                              with_records=with_records)
