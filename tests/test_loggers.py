"""Experiment trackers (``loggers=[...]``): TensorBoard, MLflow and W&B get the run, its redacted config and
results, read back with each tracker's own reader; a missing tracker library is a one-line error."""

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import run_cli, train_losses

SECRET = "hf_fake_secret_123456"
ENV_SECRET = "wandb_k3y_value_789"


def _local_hf_model(folder: Path) -> Path:
    """A tiny random Llama saved as a local Hugging Face folder (``model=hf`` has a secret ``token`` key)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.plugins.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks of
    chunks with a 7-byte header: crc32, length, type full=1/first=2/middle=3/last=4)."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, pos = path.read_bytes(), [], b"", 7  # 7-byte file header ":W&B" + magic + version
    assert data.startswith(b":W&B")
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too small for a header: skip to the next block
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _files_containing(folder: Path, needles: list) -> list:
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and any(n.encode() in p.read_bytes() for n in needles)]


def test_tensorboard_mlflow_and_wandb_get_the_run_with_its_config_redacted(tmp_path, monkeypatch):
    model_dir = _local_hf_model(tmp_path / "local-model")
    run_dir = tmp_path / "run"
    # the token is typed on the command line (wandb records sys.argv unless told not to) and an
    # API key sits in the environment
    result = run_cli(["train", "model=hf", f"model.path={model_dir}", f"model.token={SECRET}",
                      "loggers=[csv,tensorboard,mlflow,wandb]", "trainer.max_steps=3", "trainer.accelerator=cpu",
                      "trainer.enable_progress_bar=false", "threads=1", f"hydra.run.dir={run_dir}"],
                     env={"WANDB_MODE": "offline", "WANDB_API_KEY": ENV_SECRET, "MLFLOW_TRACKING_URI": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    trackers = metrics["trackers"]
    assert trackers == json.loads((run_dir / "trackers.json").read_text())
    assert set(trackers) == {"csv", "tensorboard", "mlflow", "wandb"}
    losses = train_losses(run_dir)  # the run's own metrics.csv, as before
    assert len(losses) == 3
    tuned_loss = metrics["tuned"]["perplexity/loss"]

    # TensorBoard, read with tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert trackers["tensorboard"]["log_dir"] == str(run_dir / "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    series = events.Scalars("train/loss")
    assert [e.step for e in series] == [0, 1, 2]
    assert [e.value for e in series] == pytest.approx(losses, rel=1e-6)
    assert events.Scalars("tuned/perplexity/loss")[-1].value == pytest.approx(tuned_loss, rel=1e-6)
    assert events.Scalars("tuned/perplexity/loss")[-1].step == 3
    hparams = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["model/token"].string_value == "***"
    assert hparams["model/path"].string_value == str(model_dir)
    assert hparams["trainer/max_steps"].number_value == 3

    # MLflow: the file store in the run directory, found by mlflow.search_runs
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{run_dir / 'mlruns'}")
    runs = mlflow.search_runs(experiment_names=["tuneforge"], output_format="list")
    assert [r.info.run_id for r in runs] == [trackers["mlflow"]["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model/token"] == "***"
    assert run.data.params["model/path"] == str(model_dir)
    assert run.data.params["trainer/max_steps"] == "3"
    assert run.data.metrics["tuned/perplexity/loss"] == pytest.approx(tuned_loss, rel=1e-6)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(i, pytest.approx(v, rel=1e-6)) for i, v in enumerate(losses)]

    # W&B offline: a run folder whose transaction log holds the redacted config and the history
    run_id = trackers["wandb"]["run_id"]
    [folder] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    records = _wandb_records(folder / f"run-{run_id}.wandb")
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    assert config["model"]["token"] == "***" and config["model"]["path"] == str(model_dir)
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    logged = [(row["trainer/global_step"], row["train/loss"]) for row in rows if "train/loss" in row]
    assert logged == [(i, pytest.approx(v, rel=1e-6)) for i, v in enumerate(losses)]
    assert any(row.get("tuned/perplexity/loss") == pytest.approx(tuned_loss, rel=1e-6) for row in rows)

    # no secret anywhere: not in any tracker's files, nor in the output
    assert _files_containing(run_dir, [SECRET, ENV_SECRET]) == []
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("logger, blocked", [("tensorboard", ("tensorboard", "tensorboardX")),
                                             ("mlflow", ("mlflow",)), ("wandb", ("wandb",))])
def test_a_missing_tracker_library_stops_the_run_before_the_model_loads(tmp_path, monkeypatch, logger, blocked):
    from tuneforge.errors import ConfigError
    from tuneforge.testing import run_tiny_fit

    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # `import <module>` raises ImportError
    # the model path does not exist: reaching the model would be a different error
    with pytest.raises(ConfigError) as error:
        run_tiny_fit(tmp_path, overrides=["model=hf", f"model.path={tmp_path / 'no-such-model'}",
                                          f"loggers=[csv,{logger}]"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"loggers=[{logger}] needs the '{blocked[0]}'")
    assert f"pip install 'tuneforge[{logger}]'" in message
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "metrics.csv").exists()


def test_a_tracking_uri_the_library_refuses_is_one_line_before_the_model_loads(tmp_path):
    from tuneforge.errors import ConfigError
    from tuneforge.testing import run_tiny_fit

    with pytest.raises(ConfigError) as error:
        run_tiny_fit(tmp_path, overrides=["model=hf", f"model.path={tmp_path / 'no-such-model'}", "loggers=[mlflow]",
                                          "loggers.mlflow.tracking_uri=bogus-scheme://bob:pa55word@host/x"])
    message = str(error.value)
    assert message.startswith("loggers.mlflow: the 'mlflow' logger could not be set up: ") and "\n" not in message
    assert "bogus-scheme://" in message and "pa55word" not in message  # URL credentials redacted


def test_missing_library_on_the_command_line_is_one_line_with_exit_2(tmp_path):
    blocker = tmp_path / "blocker" / "wandb"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('wandb blocked for this test')\n")
    result = run_cli(["train", "loggers=[wandb]", f"hydra.run.dir={tmp_path / 'run'}"],
                     env={"PYTHONPATH": str(blocker.parent)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert line == ("tuneforge: error: loggers=[wandb] needs the 'wandb' package, which cannot be imported "
                    "(wandb blocked for this test); install it with: pip install 'tuneforge[wandb]' "
                    "(or leave wandb out of loggers=[...])")


class RecordingLoggers:
    """A logger plugin whose builds record what they were given (one takes the context, one does not)."""

    def __init__(self):
        self.calls = []

    def tuneforge_loggers(self):
        import tuneforge

        @dataclass
        class Empty:
            """No keys."""

        def with_context(config, context):
            from lightning.pytorch.loggers import CSVLogger

            self.calls.append(("with_context", config.name, context))
            return CSVLogger(save_dir=str(context.run_dir / "recorder"), name="", version="")

        def config_only(config):
            from lightning.pytorch.loggers import CSVLogger

            self.calls.append(("config_only", config.name, None))
            return CSVLogger(save_dir="unused", name="", version="")

        return [tuneforge.LoggerSpec("recorder", Empty, build=with_context),
                tuneforge.LoggerSpec("plain", Empty, build=config_only)]


def test_loggers_get_their_context_and_the_run_keeps_its_own_metrics_csv(tmp_path):
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.training.loggers import TRACKERS_FILE, build_loggers

    recorder = RecordingLoggers()
    run_dir = tmp_path / "2026-01-01_12-00-00" / "3"  # a numbered multirun job
    run_dir.mkdir(parents=True)
    (run_dir / TRACKERS_FILE).write_text(json.dumps({"recorder": {"logger": "recorder", "run_id": "abc123"}}))

    overrides = ["loggers=[recorder,plain]"]
    plugins = load_plugins(overrides, extra_plugins=[recorder])
    cfg = compose(overrides, plugins)
    fresh = build_loggers(plugins, cfg, run_dir, resuming=False)
    resumed = build_loggers(plugins, cfg, run_dir, resuming=True)
    contexts = [context for kind, _name, context in recorder.calls if kind == "with_context"]
    assert [c.resume_run_id for c in contexts] == [None, "abc123"]
    assert contexts[0].run_dir == run_dir and contexts[0].run_name == "2026-01-01_12-00-00-3"
    assert ("config_only", "plain", None) in recorder.calls
    # no selected logger writes <run_dir>/metrics.csv, so the host adds its own, first
    own = fresh.lightning_loggers()[0]
    assert Path(own.log_dir).resolve() == run_dir.resolve() and own is fresh.run_metrics
    assert len(fresh.lightning_loggers()) == 3 and len(resumed.trackers) == 2

    # the built-in csv writes the run's metrics.csv itself: it is that logger, not a second one
    with_csv = compose(["loggers=[csv,recorder]"], plugins)
    built = build_loggers(plugins, with_csv, run_dir)
    assert built.run_metrics is built.selected[0].logger
    assert [e.key for e in built.trackers] == ["recorder"]
    assert len(built.lightning_loggers()) == 2


def test_url_credentials_are_redacted():
    from tuneforge.secrets import redact

    config = {"loggers": {"mlflow": {"tracking_uri": "https://bob:pa55word@mlflow.example:5000"}},
              "contact": "user@example.com", "path": "file:/tmp/a@b"}
    assert redact(config, secrets=[]) == {"loggers": {"mlflow": {"tracking_uri": "https://***@mlflow.example:5000"}},
                                          "contact": "user@example.com", "path": "file:/tmp/a@b"}
