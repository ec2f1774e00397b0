"""One training run, top to bottom: build -> base eval + prompting baselines -> fit -> tuned eval ->
memorisation check -> intervals and verdict -> save.

:func:`train` is the single call site of the lifecycle hooks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from tuneforge.context import RunContext
from tuneforge.errors import ConfigError, PluginError, TuneforgeError, is_disk_full
from tuneforge.evaluation.baselines import join_columns, run_baselines
from tuneforge.evaluation.comparison import evidence_options, summarize
from tuneforge.evaluation.runner import describe_metrics, run_evaluators
from tuneforge.host.guard import guard_lightning_callback, guarded_function, origin_of, spec_call
from tuneforge.specs import call_accepting
from tuneforge.training.model_io import load_model_from_config, save_model
from tuneforge.training.loggers import build_loggers
from tuneforge.training.run_dir import (close_killed_segments, keep_metric_history, move_earlier_outputs,
                                        prepare_run_dir, reached_step, read_metric_rows, read_status,
                                        redacted_config, report_previous_end, resolved_config_yaml,
                                        save_metric_history, segment_history, summed_throughput, write_json,
                                        write_outputs, write_status)
from tuneforge.training.run_lock import RunLock, ensure_writable_directory
from tuneforge.training.setup_summary import describe_setup
from tuneforge.training.trainer import (build_trainer, check_strategy, shards_weights, token_counter,
                                        writes_checkpoints)


log = logging.getLogger("tuneforge")


class RunInterrupted(Exception):
    """The run stopped on SIGTERM/SIGINT: during training after saving a checkpoint, or in another
    phase (``phase``: loading the model, loading the data, the base evaluation ...), where the
    checkpoint is the last one saved (None: nothing trained yet)."""

    def __init__(self, signal_name: str, step: int, checkpoint: Optional[Path], run_dir: Path,
                 phase: Optional[str] = None):
        self.signal_name, self.step, self.checkpoint, self.run_dir = signal_name, step, checkpoint, run_dir
        self.phase = phase
        if phase is None:
            where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (stopped before training)"
            super().__init__(f"interrupted by {signal_name} at step {step}; saved {where}")
        else:
            where = f"the last checkpoint is {checkpoint}" if checkpoint else "nothing was trained yet"
            super().__init__(f"interrupted by {signal_name} while {phase} (step {step}); {where}")


class DiskFull(TuneforgeError):
    """A write of the run failed because the disk (or the quota) is full."""


class _StopSignal(BaseException):
    """Raised by the SIGTERM/SIGINT handler outside the training loop (which checkpoints first)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def _signals_stop_the_run():
    """SIGTERM and SIGINT stop the run in any phase: outside ``fit`` (whose checkpointing callback
    installs its own handlers for the time it trains) they raise :class:`_StopSignal` at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _StopSignal(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _one_line_disk_full(exc: BaseException, run_dir: Path) -> Optional[DiskFull]:
    """A :class:`DiskFull` for an ``OSError`` (or safetensors' error) saying no space / quota; else None."""
    if isinstance(exc, TuneforgeError) or not is_disk_full(exc):
        return None
    where = getattr(exc, "filename", None) or run_dir
    return DiskFull(f"no space left on the device while writing {where}: free some space (or choose another "
                    "run_dir), then run the same command again to resume")


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


def train(cfg: DictConfig, plugins, run_dir: Path, context: Optional[RunContext] = None, components=None) -> dict:
    """Run one fine-tune described by ``cfg``; returns the final metrics.

    ``context`` says which process this is (:class:`~tuneforge.RunContext`;
    detected from the cluster environment when not given).  Under DDP every
    process runs this function; only the main one (``context.is_main``)
    writes the run directory.

    ``components`` is the validated run of ``cfg``
    (:func:`tuneforge.host.components.run_components`): each component's spec
    and typed config, which the plugins receive.  It is built here when not
    given, before the run directory is made.

    The run directory receives ``config.yaml`` (resolved), ``metrics.csv``,
    ``metrics.json`` (what was tuned where: ``setup``; data quality, base,
    prompting-baseline and tuned evaluator results with bootstrap intervals, cost per query, the train-vs-held-out
    memorisation check, training numbers and the verdict), ``predictions.jsonl``
    (prompt, reference, base, baseline and tuned outputs; rows of set ``train``
    for the memorisation sample),
    ``report.md`` / ``report.html`` with ``metrics.png`` and
    ``loss_curves.png``, ``model/`` (what the adapter saved, plus the
    tokenizer with the data's chat template) and ``status.json``
    (``running`` -> ``completed`` or ``failed``).  Then each selected
    callback's ``on_run_end`` and the ``tuneforge_run_end`` hook run.  The loggers selected with
    ``loggers=[...]`` (trackers) get the training metrics, the redacted config
    and the evaluator results; their run ids go to ``trackers.json`` and
    ``metrics.json`` (``trackers``).
    """
    import lightning.pytorch as pl
    import torch

    from tuneforge.data import quality
    from tuneforge.evaluation import merge_predictions

    from tuneforge.training.checkpoint import run_identity
    from tuneforge.training.resilience import CheckpointAndInterrupt

    if components is None:
        from tuneforge.host.components import run_components

        components = run_components(cfg, plugins)
    run_dir = Path(run_dir)
    if context is None:
        context = RunContext.detect(run_dir, cfg)
    elif context.run_dir != run_dir:
        raise ValueError(f"the run context is for {context.run_dir}, not {run_dir}")
    context.check_process_count(cfg.trainer.devices, cfg.trainer.num_nodes)  # before any model loads
    check_strategy(cfg)
    (log.info if context.world_size > 1 else log.debug)("process: %s", context.describe())
    from tuneforge.training.rank_agreement import meet_ranks, meets_before_collectives

    timeout_s = float(cfg.trainer.collective_timeout_s)
    # processes started by a cluster launcher meet first, so that a failure of rank 0 alone (the lock, the
    # run directory) stops every rank at once instead of leaving them in init_process_group
    meeting = meet_ranks(context, timeout_s) if meets_before_collectives(cfg, context) else None
    lock = None
    from tuneforge.training.data_files import DATA_FILES_FILE, data_file_hashes

    try:
        if context.is_main:  # one writer per run directory: a second run on it stops here, naming the holder
            ensure_writable_directory(run_dir)
            lock = RunLock(run_dir, "train").acquire()
            report_previous_end(run_dir, read_status(run_dir))
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        data_files = data_file_hashes(components)  # content of every declared data file (training/data_files.py)
        resume_from = prepare_run_dir(cfg, run_dir, world_size=context.world_size, data_files=data_files)
        if context.is_main:
            move_earlier_outputs(cfg, run_dir)  # resume=never: the earlier run's outputs go to previous-<n>/
        if resume_from is not None and not writes_checkpoints(cfg):
            from tuneforge.training.checkpoint import CheckpointError

            raise CheckpointError(f"strategy={cfg.strategy.name} cannot resume tuneforge's checkpoint {resume_from}; "
                                  "resume=never starts over, or resume it with strategy=ddp")
        resumed_step = _checkpoint_step(resume_from) if resume_from is not None else 0
        # a segment still marked running was killed (SIGKILL, a crash): recorded as interrupted, with its steps
        earlier_segments = close_killed_segments(segment_history(run_dir), reached_step(run_dir, resumed_step)) \
            if resume_from is not None else []
        if context.is_main:
            # the rows before the checkpoint, kept before Lightning's CSV logger starts metrics.csv afresh
            save_metric_history(run_dir, resumed_step)
            (run_dir / "config.yaml").write_text(resolved_config_yaml(cfg))
            write_json(run_dir / DATA_FILES_FILE, {"files": data_files})
            write_status(run_dir, {"status": "running", "resumed_from": _str(resume_from),
                                   "segments": [*earlier_segments, {"from_step": resumed_step, "status": "running"}]})
    except BaseException as exc:
        if lock is not None:
            lock.release()
        failure = _one_line_disk_full(exc, run_dir)
        if meeting is not None:  # tell the other ranks before leaving (they stop too, naming this rank)
            with contextlib.suppress(Exception):  # this rank's own error is the one to report
                meeting.agree(failure=(str(failure or exc).splitlines() or [type(exc).__name__])[0])
        if failure is not None:
            raise failure from exc
        raise
    if meeting is not None:
        try:
            meeting.agree()  # raises (one line) when another rank could not start
        except BaseException:
            if lock is not None:
                lock.release()
            raise
    segment: dict = {}
    metrics: dict = {}
    status, error = "failed", None
    started = time.time()
    phase = "starting the other processes"
    from tuneforge.evaluation.sharding import init_process_group
    from tuneforge.training.launch import start_local_processes

    local_processes, group_started = None, False
    loggers = None
    stop_on_signals = _signals_stop_the_run()
    stop_on_signals.__enter__()
    try:
        # the other processes of a ddp/fsdp run start now, so that the base evaluation is shared out too
        local_processes = start_local_processes(cfg, context)
        group_started = str(cfg.strategy.name) in ("ddp", "fsdp") and init_process_group(
            context, store=meeting.store if meeting is not None else None, timeout_s=timeout_s)
        if local_processes is not None:
            local_processes.group_started = group_started
        phase = "starting the run"
        # may refuse the run (a one-line error): it then ends "failed", and tuneforge_run_end still runs
        plugins.call_lifecycle_hook("tuneforge_run_start", config=cfg, run_dir=run_dir, context=context)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        # Loggers first: a tracker whose run cannot start stops the run before the model loads.
        loggers = build_loggers(components.loggers, run_dir, resuming=resume_from is not None,
                                is_main=context.is_main)
        if context.is_main:
            loggers.start(redacted_config(cfg))
        phase = "loading the model"
        model, tokenizer = spec_call(components.model.spec, "load", components.model.spec.load,
                                     components.model.config)
        adapter_spec = components.adapter.spec
        model = spec_call(adapter_spec, "apply", adapter_spec.apply, model, components.adapter.config)
        if components.config.loader.packing:
            from tuneforge.data.packing import check_packing_support

            check_packing_support(model)
        params = count_parameters(model)
        log.info("adapter %s: %d trainable of %d parameters (%.4f%%)", adapter_spec.name, params["trainable"],
                 params["total"], 100 * params["fraction"])
        metrics["parameters"] = params
        phase = "loading the data"
        splits = spec_call(components.data.spec, "load", components.data.spec.load, components.data.config, tokenizer)
        metrics["data"] = splits.stats
        metrics["setup"] = describe_setup(cfg, splits.stats, adapter_config=components.adapter.config,
                                          device=context.device, processes=context.world_size)
        metrics["data_files"] = data_files

        # Data quality, before any training: serious problems stop here.
        metrics["quality"] = quality.assess(splits, cfg.quality.max_labels, cfg.quality.identical_pair_share)
        for warning in metrics["quality"]["warnings"]:
            log.warning("data quality: %s", warning)
        quality.check(metrics["quality"], cfg.quality)
        evidence_options(cfg, splits.val)  # a slice_by field that no held-out record has stops here

        loss_spec = components.loss.spec
        loss_fn = guarded_function(origin_of(loss_spec), f"loss '{loss_spec.name}', loss_fn",
                                   spec_call(loss_spec, "build", loss_spec.build, components.loss.config,
                                             _loss_context(plugins, tokenizer)))
        callbacks = [build_callback(c.spec, c.config, context) for c in components.callbacks.values()
                     if c.spec.build is not None]
        throughput = token_counter()

        # Base-model evaluation (zero-shot and the prompting baselines) happens once per run: a resumed
        # run reuses the saved result.
        phase = "evaluating the base model"
        base_file = run_dir / "base_eval.json"
        saved = json.loads(base_file.read_text()) if resume_from is not None and base_file.is_file() else None
        if saved is not None:
            metrics["base"], base_rows = saved["metrics"], saved["predictions"]
        else:
            metrics["base"], base_pass = run_evaluators(components.evaluators, cfg, model, tokenizer, splits.val,
                                                        "base", chat_template=splits.chat_template, context=context)
            base_rows = merge_predictions({"base": base_pass})
            saved = {"metrics": metrics["base"], "predictions": base_rows, "scores": base_pass.example_scores,
                     "timings": base_pass.timings}
        baselines, skipped = run_baselines(components.baselines, components.evaluators, cfg, model, tokenizer,
                                           splits, context, saved.get("baselines"), plugins["retriever"])
        saved["baselines"] = baselines
        if context.is_main:
            write_json(base_file, saved)
        _add_baselines(metrics, baselines, skipped)
        module = _fine_tune_module(model, loss_fn, cfg.optim, cfg.trainer.on_nonfinite_loss)
        datamodule = _data_module(splits, tokenizer.pad_token_id, cfg.loader, cfg.seed,
                                  pack_length=cfg.data.get("max_length"))
        checkpointer = CheckpointAndInterrupt(run_dir, cfg.checkpoint.every_n_steps, cfg.checkpoint.keep_last,
                                              run_identity(cfg), resume_from=resume_from, data_files=data_files,
                                              requeue_job_id=context.slurm_job_id,
                                              save_checkpoints=writes_checkpoints(cfg))
        trainer = build_trainer(cfg, run_dir, [*callbacks, throughput, checkpointer], loggers.lightning_loggers())
        fit_started = time.time()
        segment.update(started_step=resumed_step, throughput=throughput, fit_started=fit_started, trainer=trainer)
        phase = "training"
        trainer.fit(module, datamodule=datamodule, ckpt_path=_str(resume_from), **_no_pickle(trainer))
        if context.is_main:  # Lightning's CSV logger started a fresh file on resume: the earlier rows go back
            keep_metric_history(run_dir)
        if checkpointer.interrupted_by:
            status = "interrupted"
            metrics["steps"] = int(trainer.global_step)
            raise RunInterrupted(checkpointer.interrupted_by, trainer.global_step, checkpointer.last_saved, run_dir)
        metrics["skipped_nonfinite_batches"] = module.skipped_batches
        segments = [*earlier_segments, _segment_record(segment, started)]
        metrics["throughput"] = dict(summed_throughput(segments), last_segment=segments[-1])
        metrics["segments"] = segments
        metrics["train"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["steps"] = int(trainer.global_step)
        metrics["setup"].update(steps=metrics["steps"], training_s=metrics["throughput"].get("fit_time_s"))
        phase = "evaluating the tuned model"
        if shards_weights(cfg):  # FSDP2: every forward of the sharded model is a collective; use it whole
            model = _unsharded(model, components)
        metrics["tuned"], tuned_pass = run_evaluators(components.evaluators, cfg, model, tokenizer, splits.val,
                                                      "tuned", chat_template=splits.chat_template, context=context)
        memorisation, train_rows = _memorisation(components, cfg, model, tokenizer, splits, context)
        metrics["metric_info"] = describe_metrics(plugins, cfg, metrics)
        metrics["cost"] = _cost(tokenizer, splits, saved, baselines, tuned_pass, metrics["throughput"])
        summarize(metrics, {"base": saved.get("scores") or {}, "tuned": tuned_pass.example_scores,
                            **{key: column["scores"] for key, column in baselines.items()}},
                  seed=int(cfg.seed), memorisation=memorisation, **_uncertainty_options(cfg, splits.val))
        metrics["wall_time_s"] = sum(float(s.get("wall_time_s") or 0) for s in earlier_segments) + time.time() - started
        phase = "saving the results"
        if context.is_main:
            metrics["trackers"] = loggers.record()
            loggers.log_results(metrics, step=metrics["steps"])
            save_model(adapter_spec, model, tokenizer, run_dir / "model", chat_template=splits.chat_template,
                       config=cfg)
            predictions = join_predictions(base_rows, merge_predictions({"tuned": tuned_pass}))
            predictions = join_columns(predictions, baselines) + train_rows
            write_outputs(run_dir, cfg, metrics, predictions, metrics_csv=run_dir / "metrics.csv")
        status = "completed"
        return metrics
    except (_StopSignal, KeyboardInterrupt) as stop:
        name = stop.signal_name if isinstance(stop, _StopSignal) else "SIGINT"
        status = "interrupted"
        trainer = segment.get("trainer")
        step = int(trainer.global_step) if trainer is not None else (_checkpoint_step(resume_from) if resume_from
                                                                     else 0)
        interrupted = RunInterrupted(name, step, _last_checkpoint(run_dir) or resume_from, run_dir, phase=phase)
        error = str(interrupted)
        raise interrupted from None
    except Exception as exc:
        failure = _one_line_disk_full(exc, run_dir) or _lost_ranks(exc, context, phase, timeout_s)
        error = str(failure or exc).splitlines()[0] if str(failure or exc) else type(exc).__name__
        if failure is not None:
            raise failure from exc
        raise
    finally:
        stop_on_signals.__exit__(None, None, None)
        if loggers is not None and context.is_main:
            loggers.finish(status)
        if context.is_main:
            segments = metrics.get("segments") or [*earlier_segments, *([_segment_record(segment, started, False,
                                                                                         status)]
                                                                        if segment else [])]
            _final_status(run_dir, {"status": status, "error": error, "steps": metrics.get("steps"),
                                    "resumed_from": _str(resume_from), "wall_time_s": time.time() - started,
                                    "segments": segments})
        end_error = None
        try:
            try:
                for callback in components.callbacks.values():
                    if callback.spec.on_run_end is not None:
                        spec_call(callback.spec, "on_run_end", call_accepting, callback.spec.on_run_end,
                                  config=callback.config, metrics=metrics, status=status, run_dir=run_dir,
                                  context=context)
                plugins.call_lifecycle_hook("tuneforge_run_end", config=cfg, run_dir=run_dir, status=status,
                                            metrics=metrics, context=context)
            except PluginError as exc:  # the run's outputs stand; status.json says why the command failed
                end_error = exc
                if context.is_main and status == "completed":
                    _mark_failed(run_dir, str(exc))
                raise
            finally:
                if local_processes is not None:
                    local_processes.finish(ok=status == "completed" and end_error is None)
                elif group_started:
                    import torch.distributed as dist

                    if dist.is_initialized():
                        dist.destroy_process_group()
        finally:
            if lock is not None:
                lock.release()


def _mark_failed(run_dir: Path, error: str) -> None:
    """Turn a completed ``status.json`` into ``failed`` with ``error`` (a callback's ``on_run_end`` or a
    ``tuneforge_run_end`` hook raised after the run's outputs were written)."""
    path = run_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = {}
    write_status(run_dir, dict(status, status="failed", error=error))


def _lost_ranks(exc: BaseException, context: RunContext, phase: str, timeout_s: float) -> Optional[TuneforgeError]:
    """One line for a collective that failed because another rank is gone (it stopped, was killed, or did
    not arrive within ``trainer.collective_timeout_s``); None for any other error."""
    if context.world_size <= 1 or isinstance(exc, TuneforgeError):
        return None
    import torch.distributed as dist

    text = str(exc)
    lost = isinstance(exc, getattr(dist, "DistError", ())) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                                  "gloo/transport", "NCCL communicator was aborted", "Socket Timeout"))
    if not lost:
        return None
    from tuneforge.training.rank_agreement import RanksDisagree

    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    return RanksDisagree(f"rank {context.global_rank} of {context.world_size} stops while {phase}: another rank "
                         f"stopped, or did not answer within {timeout_s:g} s (trainer.collective_timeout_s); see "
                         f"the other ranks' output ({first})")


def _final_status(run_dir: Path, value: dict) -> None:
    """Write the run's final ``status.json``; when even that fails (a full disk, see
    :func:`~tuneforge.training.run_dir.write_status`) say so in one log line instead of hiding the run's
    own error, and the next start reports it."""
    try:
        write_status(run_dir, value)
    except OSError as exc:
        log.error("could not write %s (%s): it still says 'running'; the next start reports this run as "
                  "interrupted", run_dir / "status.json", exc.strerror or exc)


def _last_checkpoint(run_dir: Path) -> Optional[Path]:
    from tuneforge.training.checkpoint import latest_valid_checkpoint

    try:
        return latest_valid_checkpoint(run_dir)
    except OSError:
        return None


def _unsharded(model, components):
    """The trained ``model`` (sharded by ``strategy=fsdp``) whole on every rank, for the tuned evaluation and
    ``model/``: the same model built again (model source + adapter) with the gathered full state."""
    from tuneforge.training.fsdp import unsharded_model

    def build():
        base, _ = spec_call(components.model.spec, "load", components.model.spec.load, components.model.config)
        return spec_call(components.adapter.spec, "apply", components.adapter.spec.apply, base,
                         components.adapter.config)

    return unsharded_model(model, build)


def _segment_record(segment: dict, started: float, reduce: bool = True, status: str = "completed") -> dict:
    """One start-or-resume of a run: the steps it trained, its throughput, wall time and how it ended
    (``status``).  ``reduce``: every process calls this (the token count is summed over the process group)."""
    trainer = segment.get("trainer")
    summary = segment["throughput"].summary(time.time() - segment["fit_started"], trainer.world_size,
                                            reduce=reduce) if trainer is not None else {}
    return {"from_step": segment.get("started_step", 0), "to_step": int(trainer.global_step) if trainer else None,
            "wall_time_s": time.time() - started, "status": status, **summary}


def run_train(cfg, plugins, run_dir: Optional[str] = None, context=None, components=None) -> dict:
    """Validate ``cfg`` (unless its ``components`` from :func:`~tuneforge.host.components.run_components`
    are given) and train into ``cfg.run_dir`` (else ``run_dir``); ``context``: the
    :class:`~tuneforge.RunContext` of this process, detected by ``train`` when None."""
    from tuneforge.host.components import run_components

    components = components if components is not None else run_components(cfg, plugins)
    target = components.config.run_dir or run_dir
    if not target:
        raise ConfigError("no run directory: set run_dir=<dir>")
    return train(components.config, plugins, Path(target), context=context, components=components)


def _add_baselines(metrics: dict, baselines: dict, skipped: dict) -> None:
    """The baseline columns' metrics (``baselines``), labels (``baseline_info``) and the reasons of those
    that gave no column (``baselines_skipped``) into the run's metrics."""
    metrics["baselines"] = {key: column["metrics"] for key, column in baselines.items()}
    metrics["baseline_info"] = {key: {**(column.get("info") or {}), "name": column["name"], "label": column["label"]}
                                for key, column in baselines.items()}
    if skipped:
        metrics["baselines_skipped"] = skipped


def _memorisation(components, cfg: DictConfig, model, tokenizer, splits, context) -> tuple:
    """The held-out evaluators on ``memorisation.sample`` training examples (drawn with the seed) with the
    tuned model: ``({"sample", "metrics", "scores"} or None, prediction rows of set "train")``."""
    import random

    from tuneforge.evaluation import merge_predictions

    size = min(int((cfg.get("memorisation") or {}).get("sample", 30) or 0), len(splits.train))
    if size <= 0:
        return None, []
    sample = random.Random(int(cfg.seed)).sample(list(splits.train), size)
    values, one_pass = run_evaluators(components.evaluators, cfg, model, tokenizer, sample, "tuned",
                                      chat_template=splits.chat_template, context=context, held_out_only=True)
    rows = [dict(row, set="train") for row in merge_predictions({"tuned": one_pass}) if row["set"] == "val"]
    return {"sample": size, "metrics": values, "scores": one_pass.example_scores}, rows


def _cost(tokenizer, splits, saved: dict, baselines: dict, tuned_pass, throughput: dict) -> dict:
    """Per column: prompt and completion tokens and measured generation seconds per held-out query (with
    the spread over batches); the tuned column also its training time."""
    from tuneforge.evaluation import merge_predictions
    from tuneforge.evaluation.baselines import prompt_tokens_per_query
    from tuneforge.evaluation.cost import column_cost

    zero_shot = prompt_tokens_per_query(tokenizer, splits.val, splits.chat_template) \
        if all(ex.get("messages") for ex in splits.val) else None
    cost = {"base": column_cost("base", zero_shot, tokenizer, saved.get("predictions") or [], saved.get("timings"))}
    for key, column in baselines.items():
        cost[key] = column_cost(key, column["prompt_tokens"], tokenizer, column.get("predictions") or [],
                                column["timings"])
    cost["tuned"] = dict(column_cost("tuned", zero_shot, tokenizer, merge_predictions({"tuned": tuned_pass}),
                                     tuned_pass.timings), training_s=throughput.get("fit_time_s"))
    return cost


def _uncertainty_options(cfg: DictConfig, val_examples) -> dict:
    """The :func:`summarize` settings of the run: ``uncertainty``, ``evidence`` and the memorisation gap."""
    return {**evidence_options(cfg, val_examples), "flag_gap": float(cfg.memorisation.flag_gap)}


def _no_pickle(trainer) -> dict:
    """``weights_only=True`` where Lightning accepts it (>= 2.5); SafeCheckpointIO never unpickles anyway."""
    import inspect

    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def _checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "state.json").read_text())
    return int(state.get("global_step", 0))


def _str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def count_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def _loss_context(plugins, tokenizer):
    from tuneforge.losses import LossContext

    return LossContext(tokenizer=tokenizer, load_model=lambda model_config: load_model_from_config(
        plugins, model_config, key="loss.teacher"))


def build_callback(spec, config, context: RunContext):
    """``spec.build(config, context)`` when ``build`` takes a second parameter, else ``spec.build(config)``;
    the Lightning callback it returns runs each of its hooks behind the plugin guard
    (:func:`tuneforge.host.guard.guard_lightning_callback`)."""
    import inspect

    try:
        parameters = list(inspect.signature(spec.build).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a signature: the documented minimum
        parameters = None
    if parameters is None:
        takes_context = False
    else:
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_context = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
    arguments = (config, context) if takes_context else (config,)
    callback = spec_call(spec, "build", spec.build, *arguments)
    return guard_lightning_callback(callback, origin_of(spec), f"callback '{spec.name}'")


def _fine_tune_module(model, loss_fn, optim_cfg, on_nonfinite_loss: str = "stop"):
    from tuneforge.training.module import FineTuneModule

    return FineTuneModule(model, loss_fn, optim_cfg, on_nonfinite_loss)


def _data_module(splits, pad_token_id, loader_cfg, seed, pack_length=None):
    from tuneforge.training.data_module import FineTuneDataModule

    return FineTuneDataModule(splits, pad_token_id, loader_cfg, seed, pack_length=pack_length)
