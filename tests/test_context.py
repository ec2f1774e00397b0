"""The run context: which process this is (from Lightning's cluster environments), passed explicitly."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import tuneforge
from tuneforge import RunContext
from tuneforge.context import device_request, evaluation_device

from helpers import TUNEFORGE, run_cli, train_losses

#: what a launcher may have left in the test runner's own environment
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE",
                    "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "LSB_JOBID", "LSB_DJOB_RANKFILE",
                    "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK", "HYDRA_FULL_ERROR")

#: task 1 of `srun --nodes=1 --ntasks-per-node=2 ...`, as srun sets it (no RANK, no LOCAL_RANK)
SRUN_TASK_1 = {"SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_NTASKS": "2",
               "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_JOB_ID": "123", "SLURM_JOB_NAME": "train",
               "SLURM_NODELIST": "localhost"}
#: rank 1 of `torchrun --nproc_per_node=2 --nnodes=1 ...`
TORCHRUN_RANK_1 = {"TORCHELASTIC_RUN_ID": "run-1", "RANK": "1", "LOCAL_RANK": "1", "GROUP_RANK": "0",
                   "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _clean(environ: dict) -> dict:
    return {k: v for k, v in environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}


@pytest.fixture
def launch_env(monkeypatch):
    """Start from an environment without launcher variables; returns a setter for some."""
    for name in set(os.environ) - set(_clean(dict(os.environ))):
        monkeypatch.delenv(name)

    def set_env(variables: dict) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_srun_task_is_not_main_and_knows_its_rank(launch_env, tmp_path):
    launch_env(SRUN_TASK_1)
    context = RunContext.detect(tmp_path, {"trainer": {"accelerator": "cpu", "devices": 2, "num_nodes": 1}})
    assert not context.is_main
    assert (context.global_rank, context.local_rank, context.node_rank, context.world_size) == (1, 1, 0, 2)
    assert context.cluster_environment == "SLURMEnvironment" and context.device == "cpu"
    context.check_process_count(2, 1)  # consistent: no error


def test_interactive_slurm_shell_is_not_a_slurm_launch_as_in_lightning(launch_env, tmp_path):
    launch_env(dict(SRUN_TASK_1, SLURM_JOB_NAME="bash"))  # salloc + srun --pty bash
    context = RunContext.detect(tmp_path, accelerator="cpu", devices=1)
    assert context.is_main and context.cluster_environment == "LightningEnvironment"
    assert (context.global_rank, context.world_size) == (0, 1)


def test_torchrun_rank_is_read_from_torchelastic(launch_env, tmp_path):
    launch_env(TORCHRUN_RANK_1)
    context = RunContext.detect(tmp_path, accelerator="cpu", devices=2)
    assert not context.is_main
    assert (context.global_rank, context.local_rank, context.node_rank, context.world_size) == (1, 1, 0, 2)
    assert context.cluster_environment == "TorchElasticEnvironment"


def test_lightning_launcher_child_is_not_main(launch_env, tmp_path):
    launch_env({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"})  # what Lightning's DDP launcher sets
    context = RunContext.detect(tmp_path, accelerator="cpu", devices=2)
    assert not context.is_main and (context.global_rank, context.world_size) == (1, 2)


def _config(strategy: str = "ddp", devices: int = 2):
    from omegaconf import OmegaConf

    return OmegaConf.create({"strategy": {"name": strategy},
                             "trainer": {"accelerator": "cpu", "devices": devices, "num_nodes": 1}})


def test_the_process_the_user_started_starts_the_others_and_gives_them_their_environment(launch_env, tmp_path):
    from tuneforge.context import EARLY_GROUP_VARIABLE
    from tuneforge.training.launch import needs_local_launch

    main = dataclasses.replace(RunContext.detect(tmp_path, _config()), child_command=("tuneforge", "train"))
    assert main.is_main and main.world_size == 2
    assert not main.local_rank_from_launcher and not main.early_process_group
    assert main.starts_local_processes and main.process_group_before_fit
    assert needs_local_launch(_config("ddp"), main) and needs_local_launch(_config("fsdp"), main)
    assert not needs_local_launch(_config("deepspeed_stage_2"), main)
    assert not dataclasses.replace(main, child_command=None).starts_local_processes  # Lightning's launcher does
    single = dataclasses.replace(RunContext.detect(tmp_path, _config(devices=1)), child_command=("tuneforge",))
    assert not single.starts_local_processes and not needs_local_launch(_config(), single)

    env = main.child_environment(1, "127.0.0.1", 29512)
    launched = {name: env[name] for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE",
                                             EARLY_GROUP_VARIABLE)}
    assert launched == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512", "NODE_RANK": "0", "LOCAL_RANK": "1",
                        "WORLD_SIZE": "2", EARLY_GROUP_VARIABLE: "1"}
    assert env["PATH"] == os.environ["PATH"]  # the rest of this process's environment goes along
    assert EARLY_GROUP_VARIABLE not in main.launch_variables("127.0.0.1", 29512)  # this process's own: rank 0
    assert main.launch_variables("127.0.0.1", 29512)["LOCAL_RANK"] == "0"

    launch_env(launched)  # the child, detected from the environment it was given
    child = dataclasses.replace(RunContext.detect(tmp_path, _config()), child_command=("tuneforge", "train"))
    assert (child.global_rank, child.local_rank, child.world_size, child.is_main) == (1, 1, 2, False)
    assert child.local_rank_from_launcher and child.early_process_group
    assert not child.starts_local_processes and child.process_group_before_fit
    assert not needs_local_launch(_config(), child)


def test_children_of_lightnings_own_launcher_make_no_early_process_group(launch_env, tmp_path):
    from tuneforge.evaluation.sharding import init_process_group

    launch_env({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"})  # Lightning's launcher, inside fit
    child = dataclasses.replace(RunContext.detect(tmp_path, _config()), child_command=("tuneforge", "train"))
    assert child.local_rank_from_launcher and not child.early_process_group
    assert not child.process_group_before_fit and not child.starts_local_processes
    assert init_process_group(child) is False  # returns at once: no group, no waiting for a rank 0
    launch_env({"LOCAL_RANK": "0"})  # Lightning's launcher sets it in the main process too
    main = dataclasses.replace(RunContext.detect(tmp_path, _config()), child_command=("tuneforge", "train"))
    assert main.is_main and not main.starts_local_processes and not main.process_group_before_fit


def test_a_cluster_launchers_processes_make_their_group_early_and_start_no_others(launch_env, tmp_path):
    launch_env(TORCHRUN_RANK_1)
    context = dataclasses.replace(RunContext.detect(tmp_path, _config()), child_command=("tuneforge", "train"))
    assert context.local_rank_from_launcher and not context.early_process_group
    assert context.process_group_before_fit and not context.starts_local_processes


def test_set_environment_sets_and_restores(monkeypatch):
    from tuneforge.context import set_environment

    monkeypatch.setenv("TUNEFORGE_TEST_A", "old")
    monkeypatch.delenv("TUNEFORGE_TEST_B", raising=False)
    saved = set_environment({"TUNEFORGE_TEST_A": "new", "TUNEFORGE_TEST_B": 7})
    assert (os.environ["TUNEFORGE_TEST_A"], os.environ["TUNEFORGE_TEST_B"]) == ("new", "7")
    assert saved == {"TUNEFORGE_TEST_A": "old", "TUNEFORGE_TEST_B": None}
    set_environment(saved)
    assert os.environ["TUNEFORGE_TEST_A"] == "old" and "TUNEFORGE_TEST_B" not in os.environ


def test_plain_process_is_main_rank_zero_of_one(launch_env, tmp_path):
    config = {"trainer": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "max_steps": 3}}
    context = RunContext.detect(tmp_path, config, debug=True)
    assert context.is_main and context.debug and context.run_dir == tmp_path
    assert (context.global_rank, context.local_rank, context.node_rank, context.world_size) == (0, 0, 0, 1)
    assert context.device == "cpu" and context.cluster_environment == "LightningEnvironment"
    assert context.config.trainer.max_steps == 3
    with pytest.raises(Exception, match="read-only"):
        context.config.trainer.max_steps = 5
    with pytest.raises(AttributeError):
        context.global_rank = 1  # frozen


def test_ranks_agree_with_lightnings_trainer_for_every_launcher():
    """RunContext and lightning.Trainer read the same environment the same way (one process per scenario set)."""
    scenarios = [
        ({}, 1, 1),
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, 2, 1),  # child of Lightning's launcher
        ({"NODE_RANK": "1"}, 2, 2),  # the process started by hand on the second of two nodes
        (SRUN_TASK_1, 2, 1),
        (dict(SRUN_TASK_1, SLURM_PROCID="3", SLURM_NODEID="1", SLURM_NTASKS="4", SLURM_NNODES="2"), 2, 2),
        (dict(SRUN_TASK_1, SLURM_JOB_NAME="interactive"), 1, 1),
        (TORCHRUN_RANK_1, 2, 1),
    ]
    code = """
import json, os, sys
import lightning.pytorch as pl
from tuneforge import RunContext
results = []
base = dict(os.environ)
for variables, devices, num_nodes in json.loads(sys.argv[1]):
    os.environ.clear(); os.environ.update(base); os.environ.update(variables)
    context = RunContext.detect(".", accelerator="cpu", devices=devices, num_nodes=num_nodes)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    results.append([[context.global_rank, context.local_rank, context.node_rank, context.world_size,
                     context.cluster_environment],
                    [trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size,
                     type(trainer.strategy.cluster_environment).__name__]])
print("RESULTS", json.dumps(results))
"""
    env = dict(_clean(dict(os.environ)), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(scenarios)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.split("RESULTS", 1)[1])
    for (variables, _, _), (ours, lightnings) in zip(scenarios, results):
        assert ours == lightnings, variables
    assert [ours[0] for ours, _ in results] == [0, 1, 2, 1, 3, 0, 1]


def test_process_count_mismatch_names_the_launcher_flags(launch_env, tmp_path):
    launch_env(dict(SRUN_TASK_1, SLURM_PROCID="0", SLURM_LOCALID="0"))
    context = RunContext.detect(tmp_path, accelerator="cpu", devices=1)
    with pytest.raises(tuneforge.ConfigError) as info:
        context.check_process_count(1, 1)
    message = str(info.value)
    assert "\n" not in message and "SLURM started 2 process(es)" in message
    assert "trainer.devices=1 x trainer.num_nodes=1 needs 1" in message
    assert "srun --nodes=1 --ntasks-per-node=1" in message
    context.check_process_count("auto", 1)  # Lightning decides: nothing to compare
    context.check_process_count([0, 1], 1)  # two device ids per node: consistent

    launch_env(TORCHRUN_RANK_1)
    with pytest.raises(tuneforge.ConfigError, match=r"torchrun --nproc_per_node=4 --nnodes=1"):
        RunContext.detect(tmp_path, accelerator="cpu").check_process_count(4, 1)


def test_srun_without_ntasks_per_node_is_one_line(launch_env, tmp_path):
    variables = dict(SRUN_TASK_1)
    del variables["SLURM_NTASKS_PER_NODE"]  # `srun --ntasks=2`, which Lightning refuses
    launch_env(variables)
    with pytest.raises(tuneforge.ConfigError, match=r"SLURMEnvironment: .*--ntasks-per-node=2"):
        RunContext.detect(tmp_path, accelerator="cpu")


def test_device_request_reads_trainer_devices_like_lightning():
    assert device_request(2) == (2, None) and device_request("2") == (2, None)
    assert device_request([0, 3]) == (2, [0, 3]) and device_request("0,3") == (2, [0, 3])
    assert device_request("auto") == (None, None) and device_request(-1) == (None, None)
    assert evaluation_device("cpu", 2, local_rank=1) == "cpu"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_each_local_rank_evaluates_on_its_own_gpu():
    import torch

    count = torch.cuda.device_count()
    assert evaluation_device("gpu", count, local_rank=count - 1) == f"cuda:{count - 1}"
    assert evaluation_device("auto", [count - 1], local_rank=0) == f"cuda:{count - 1}"
    with pytest.raises(tuneforge.ConfigError, match="GPU"):
        evaluation_device("gpu", count + 1, local_rank=count)


def test_process_count_mismatch_stops_before_the_model_loads(launch_env, tmp_path):
    from tuneforge.plugins.models import TinyModelConfig
    from tuneforge.testing import run_tiny_fit

    class ExplodingModel:
        __name__ = "exploding_model"

        @tuneforge.hookimpl
        def tuneforge_model_sources(self):
            def load(config):
                raise AssertionError("the model was loaded before the launch was checked")

            return [tuneforge.ModelSourceSpec("exploding", TinyModelConfig, load=load)]

    launch_env(dict(SRUN_TASK_1, SLURM_PROCID="0", SLURM_LOCALID="0"))
    with pytest.raises(tuneforge.ConfigError, match=r"SLURM started 2 process\(es\)"):
        run_tiny_fit(tmp_path / "run", plugins=[ExplodingModel()], overrides=["model=exploding"])
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "status.json").exists()


def test_process_count_mismatch_from_the_command_line_is_one_line(tmp_path):
    env = dict(SRUN_TASK_1, SLURM_PROCID="0", SLURM_LOCALID="0")
    result = run_cli(["train", "trainer.devices=1", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}"],
                     env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tuneforge: error: SLURM started 2 process(es) but trainer.devices=1 x trainer.num_nodes=1 needs 1; "
        "launch with 'srun --nodes=1 --ntasks-per-node=1 tuneforge train ...', or set trainer.devices and "
        "trainer.num_nodes so that devices x num_nodes = 2"]
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "status.json").exists()
    debug = run_cli(["train", "--debug", "trainer.devices=1", "trainer.accelerator=cpu",
                     f"hydra.run.dir={tmp_path}"], env=env)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "check_process_count" in debug.stderr


def test_debug_is_not_exported_to_the_environment(monkeypatch, capsys):
    from tuneforge.commands.cli import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    main(["--debug", "--version"])
    assert "tuneforge" in capsys.readouterr().out
    assert "HYDRA_FULL_ERROR" not in os.environ and "TUNEFORGE_COMMAND" not in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_simulated_srun_task_1_writes_nothing_and_prints_no_summary(tmp_path):
    """Two tasks as `srun --ntasks-per-node=2` starts them (SLURM_* only, no RANK/LOCAL_RANK), each
    given its own run directory: task 0 writes the run, task 1 only trains its shard."""
    common = ["train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3",
              "trainer.enable_progress_bar=false", "threads=1"]
    base = dict(_clean(dict(os.environ)), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(_free_port()), PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    tasks, logs = [], []
    for rank in (0, 1):
        env = {**base, **SRUN_TASK_1, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        out, err = tmp_path / f"task{rank}.out", tmp_path / f"task{rank}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            tasks.append(subprocess.Popen([*TUNEFORGE, *common, f"hydra.run.dir={tmp_path / f'task{rank}'}"],
                                          env=env, stdout=stdout, stderr=stderr, text=True))
        logs.append((out, err))
    try:
        for task in tasks:
            task.wait(timeout=240)
    finally:
        for task in tasks:
            task.kill()
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    for task, (_, err) in zip(tasks, outputs):
        assert task.returncode == 0, err[-3000:]
    (out0, _), (out1, err1) = outputs
    assert out0.count("run directory:") == 1 and "perplexity/loss" in out0
    assert "run directory:" not in out1 and "perplexity/loss" not in out1
    assert "rank 1 of 2 (node 0, local rank 1, SLURMEnvironment)" in out1 + err1
    assert [p for p in (tmp_path / "task1").rglob("*")] == []  # Hydra made the directory; nothing inside
    run = tmp_path / "task0"
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert (run / "config.yaml").is_file() and (run / "base_eval.json").is_file()
    assert (run / "model" / "adapter_model.safetensors").is_file()
    assert len(train_losses(run)) == 3


@dataclass
class NoFields:
    """No fields: the context probe only records what it is given."""


class ContextProbe:
    """Records the context each extension point receives in one tiny fit."""

    __name__ = "context_probe"

    def __init__(self):
        self.seen = {"evaluate": [], "old_build": 0}

    def build(self, config, context):
        import lightning.pytorch as pl

        self.seen["build"] = context
        return pl.Callback()

    def old_build(self, config):
        import lightning.pytorch as pl

        self.seen["old_build"] += 1
        return pl.Callback()

    def evaluate(self, model, tokenizer, examples, config, context=None):
        self.seen["evaluate"].append(context)
        return {"examples": float(len(examples))}

    @tuneforge.hookimpl
    def tuneforge_callbacks(self):
        return [tuneforge.CallbackSpec("ctx_new", NoFields, build=self.build),
                tuneforge.CallbackSpec("ctx_old", NoFields, build=self.old_build)]

    @tuneforge.hookimpl
    def tuneforge_evaluators(self):
        return [tuneforge.EvaluatorSpec("ctx_eval", NoFields, evaluate=self.evaluate)]

    @tuneforge.hookimpl
    def tuneforge_run_start(self, run_dir, context):
        self.seen["start"] = (run_dir, context)

    @tuneforge.hookimpl
    def tuneforge_run_end(self, status, context):
        self.seen["end"] = (status, context)


def test_hooks_callbacks_and_evaluators_receive_the_one_run_context(launch_env, tmp_path):
    from tuneforge.testing import run_tiny_fit

    probe = ContextProbe()
    run_tiny_fit(tmp_path, plugins=[probe], overrides=["trainer.max_steps=2", "callbacks=[ctx_new,ctx_old]",
                                                       "evaluators=[ctx_eval]"])
    run_dir, context = probe.seen["start"]
    assert isinstance(context, RunContext) and run_dir == context.run_dir == Path(tmp_path)
    assert context.is_main and context.world_size == 1 and context.device == "cpu"
    assert context.config.trainer.max_steps == 2
    assert probe.seen["build"] is context and probe.seen["old_build"] == 1
    # base, the two prompting baselines, tuned, the memorisation sample: always the one context
    assert probe.seen["evaluate"] == [context] * 5
    assert probe.seen["end"] == ("completed", context)


def test_targets_report_only_in_the_main_process(tmp_path, capsys):
    from tuneforge.plugins import targets

    config = targets.TargetsConfig(checks={"s": "steps >= 1"})
    worker = RunContext(run_dir=tmp_path, global_rank=1, local_rank=1, world_size=2)
    targets.report_targets(config, {"steps": 3}, "completed", tmp_path, context=worker)
    assert not (tmp_path / "targets.json").exists() and capsys.readouterr().out == ""
    main = RunContext(run_dir=tmp_path, world_size=2)
    targets.report_targets(config, {"steps": 3}, "completed", tmp_path, context=main)
    assert json.loads((tmp_path / "targets.json").read_text())["passed"] is True
    assert "PASS" in capsys.readouterr().out
