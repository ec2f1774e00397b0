"""Multi-process runs (CPU, gloo): exact resume on many ranks, world-size refusal, one run directory,
the sampler with fewer examples than ranks, SLURM's requeue signal, and strategy checks.

The real multi-process tests start 2 processes (Lightning's launcher, simulated ``srun`` tasks, or two
``torchrun`` "nodes" on localhost); each keeps to a few optimizer steps of the tiny model.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.context import ProcessRanks, shared_run_dir
from tuneforge.training.checkpoint import CheckpointError
from tuneforge.training.checkpoint_callback import check_resume_agreement
from tuneforge.training.resumable_sampler import ResumableSampler

from helpers import FIXTURES, TUNEFORGE, run_cli, train_losses

#: LoRA with dropout, shuffled data, accumulation 2, warmup: 6 steps of 2 micro-batches of 2 per rank
DDP_RUN = ["train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "adapter.lora_dropout=0.1",
           "loader.shuffle=true", "trainer.max_steps=6", "trainer.accumulate_grad_batches=2", "loader.batch_size=2",
           "optim.lr=5e-3", "optim.warmup_steps=2", "checkpoint.every_n_steps=2", "checkpoint.keep_last=0",
           "trainer.enable_progress_bar=false", "threads=1", "callbacks=[batch_log]", "evaluators=[]"]

#: what a launcher may have left in the test runner's own environment
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE",
                    "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "LSB_JOBID", "HYDRA_FULL_ERROR")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(log_path) -> dict:
    """{rank: [row, ...]} in (epoch, batch) order; for a resumed run the later record of a micro-batch wins."""
    final = {}
    for line in log_path.read_text().splitlines():
        row = json.loads(line)
        final[(row["rank"], row["epoch"], row["batch"])] = row
    ranks = sorted({key[0] for key in final})
    return {rank: [final[key] for key in sorted(final) if key[0] == rank] for rank in ranks}


def _adapter(run_dir) -> dict:
    return load_file(str(run_dir / "model" / "adapter_model.safetensors"))


def _assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    """One uninterrupted 2-process run of DDP_RUN: (run directory, batch log)."""
    folder = tmp_path_factory.mktemp("ddp_reference")
    log = folder / "batches.log"
    result = run_cli([*DDP_RUN, f"callbacks.batch_log.path={log}", f"hydra.run.dir={folder / 'run'}"],
                     site_dirs=["steplog"], env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run", log


# ---------------------------------------------------------------------------
# Exact resume on two ranks; another world size is refused
# ---------------------------------------------------------------------------


@pytest.mark.fault(fault="a 2-process DDP run SIGKILLed mid-training",
                   outcome="the same command resumes it; micro-batches and final weights equal the uninterrupted run's")
def test_ddp_sigkill_then_resume_matches_the_uninterrupted_two_process_run(ddp_reference, tmp_path):
    reference, reference_log = ddp_reference
    # the kill step is drawn from a printed seed, so a failure can be replayed: RESUME_TEST_SEED=<seed>
    seed = int(os.environ.get("RESUME_TEST_SEED", str(time.time_ns() % 1_000_000)))
    kill_step = random.Random(seed).randint(3, 5)  # after the first checkpoint (step 2)
    print(f"kill step {kill_step} (RESUME_TEST_SEED={seed})")
    crashed, log = tmp_path / "crashed", tmp_path / "crashed.log"
    killed = run_cli([*DDP_RUN, f"callbacks.batch_log.path={log}", f"callbacks.batch_log.kill_at_step={kill_step}",
                      f"hydra.run.dir={crashed}"], site_dirs=["steplog"], env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL, (kill_step, killed.stderr[-2000:])
    checkpoint = crashed / "checkpoints" / f"step-{(kill_step // 2) * 2:08d}"
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["tuneforge"]["world_size"] == 2 and len(state["rng_states"]) == 2  # one entry per rank

    # another number of processes is refused in one line, before anything loads or is written
    other = run_cli([*DDP_RUN, "trainer.devices=1", "strategy=auto", f"callbacks.batch_log.path={log}",
                     f"hydra.run.dir={crashed}"], site_dirs=["steplog"])
    assert other.returncode == 2, other.stderr[-2000:]
    assert other.stderr.strip().splitlines() == [
        f"tuneforge: error: checkpoint {checkpoint} was written by 2 rank(s), this launch has 1: resume with the "
        "same number of processes, or resume=never"]

    resumed = run_cli([*DDP_RUN, f"callbacks.batch_log.path={log}", f"hydra.run.dir={crashed}"],
                      site_dirs=["steplog"], env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status = json.loads((crashed / "status.json").read_text())
    assert status["status"] == "completed" and status["steps"] == 6 and status["resumed_from"] == str(checkpoint)

    expected, got = _batches(reference_log), _batches(log)
    assert sorted(got) == [0, 1]
    for rank in (0, 1):  # each rank saw the same micro-batches in the same order, with the same learning rate
        assert [b["ids"] for b in got[rank]] == [b["ids"] for b in expected[rank]], (rank, kill_step)
        assert [b["lr"] for b in got[rank]] == pytest.approx([b["lr"] for b in expected[rank]], rel=1e-9)
        assert len(got[rank]) == 12
    assert set(b["ids"] for b in got[0]).isdisjoint(b["ids"] for b in got[1])  # the ranks read different shards
    _assert_same_weights(_adapter(crashed), _adapter(reference))  # LoRA dropout 0.1: every rank's RNG resumed
    assert train_losses(crashed) == pytest.approx(train_losses(reference), abs=1e-6)


def test_logged_loss_is_global_and_the_same_on_every_rank(ddp_reference):
    """train/loss is all-reduced: what rank 1 sees equals what rank 0 logged (the 1-process equality is
    tests/test_cli.py::test_two_process_ddp_equals_one_process_with_the_same_global_batch)."""
    reference, log = ddp_reference
    rows = _batches(log)
    seen = {rank: {b["step"]: b["loss"] for b in rows[rank] if b["loss"] is not None} for rank in rows}
    assert seen[0] and seen[0] == seen[1]
    logged = train_losses(reference)  # row k: the loss of optimizer step k, seen from step k + 1 on
    assert [seen[0][step] for step in sorted(seen[0])] == pytest.approx(logged[:len(seen[0])], abs=1e-6)


# ---------------------------------------------------------------------------
# SLURM requeue (SIGUSR1): every rank checkpoints the same step
# ---------------------------------------------------------------------------

#: `srun --nodes=1 --ntasks-per-node=2` task variables (rank filled in per task)
SRUN = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "123", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost"}


def _srun_tasks(tmp_path, args, tag, extra_env=None):
    """Start two simulated srun tasks in ``tmp_path`` (their cwd); returns [(process, stderr path)]."""
    base = _clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                      PYTHONPATH=os.pathsep.join([str(FIXTURES / "steplog"), os.environ.get("PYTHONPATH", "")]),
                      **(extra_env or {}))
    tasks = []
    for rank in (0, 1):
        env = dict(base, **SRUN, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))
        err = tmp_path / f"{tag}{rank}.err"
        with err.open("w") as stderr:
            tasks.append((subprocess.Popen([*TUNEFORGE, *args], env=env, cwd=tmp_path, stdout=stderr,
                                           stderr=subprocess.STDOUT, text=True), err))
    return tasks


def _wait(tasks, timeout=300):
    try:
        for task, _ in tasks:
            task.wait(timeout=timeout)
    finally:
        for task, _ in tasks:
            if task.poll() is None:
                task.kill()
    return [task.returncode for task, _ in tasks], [err.read_text() for _, err in tasks]


@pytest.mark.fault(fault="SLURM's requeue signal (SIGUSR1) on one task of a 2-task job",
                   outcome="both ranks checkpoint the same step, rank 0 requeues the job once, the requeued job resumes exactly")
def test_sigusr1_on_one_slurm_task_checkpoints_the_same_step_on_both_requeues_and_resumes_exactly(
        ddp_reference, tmp_path):
    reference, reference_log = ddp_reference
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    # stands in for SLURM's scontrol, which this machine does not have: records how it was called
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "batches.log"
    # no run_dir: both tasks derive runs/slurm-123 from the job id (a requeued job keeps it)
    args = [a for a in DDP_RUN if not a.startswith(("trainer.devices", "strategy"))]
    args = [*args, "strategy=ddp", "trainer.devices=2", f"callbacks.batch_log.path={log}"]
    tasks = _srun_tasks(tmp_path, [*args, "callbacks.batch_log.sleep_s=0.4"], "first", path)
    deadline = time.time() + 240
    while time.time() < deadline and not any(json.loads(line)["rank"] == 1 and json.loads(line)["step"] >= 2
                                             for line in (log.read_text().splitlines() if log.exists() else [])):
        time.sleep(0.1)
    tasks[1][0].send_signal(signal.SIGUSR1)  # only task 1: the other learns it at the end of this step
    codes, outputs = _wait(tasks)
    assert codes == [143, 143], outputs[0][-3000:] + outputs[1][-3000:]
    run = tmp_path / "runs" / "slurm-123"
    assert calls.read_text() == "requeue 123\n"  # once, from rank 0
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted"
    saved = sorted((run / "checkpoints").iterdir())
    stopped_at = int(saved[-1].name.split("-")[1])
    assert (saved[-1] / "COMPLETE").is_file() and 2 < stopped_at < 6
    assert not list(run.glob("hpc_ckpt_*"))  # Lightning's own handler (which saves wherever each rank is) is off
    last_step = {rank: max(b["step"] for b in rows) for rank, rows in _batches(log).items()}
    assert last_step == {0: stopped_at - 1, 1: stopped_at - 1}, last_step  # both stopped after the same step
    assert f"interrupted by SIGUSR1 at step {stopped_at}" in outputs[0]

    codes, outputs = _wait(_srun_tasks(tmp_path, args, "second", path))  # the requeued job
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    got, expected = _batches(log), _batches(reference_log)
    for rank in (0, 1):
        assert [b["ids"] for b in got[rank]] == [b["ids"] for b in expected[rank]]
    _assert_same_weights(_adapter(run), _adapter(reference))


# ---------------------------------------------------------------------------
# One run directory for all ranks
# ---------------------------------------------------------------------------


def _torchrun_nodes(tmp_path, args, tag):
    """Two torchrun "nodes" on localhost (static rendezvous on 127.0.0.1, no --rdzv-id), one process each."""
    port = _free_port()
    nodes = []
    for node in (0, 1):
        err = tmp_path / f"{tag}{node}.log"
        with err.open("w") as out:
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                       "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "tuneforge",
                       "train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2",
                       "trainer.max_steps=2", "trainer.enable_progress_bar=false", "threads=1", *args]
            nodes.append((subprocess.Popen(command, env=_clean_env(), cwd=tmp_path, stdout=out,
                                           stderr=subprocess.STDOUT, text=True), err))
    return _wait(nodes)


def test_two_node_torchrun_without_run_dir_is_one_line_and_with_it_writes_one_run(tmp_path):
    codes, outputs = _torchrun_nodes(tmp_path, [], "norundir")
    message = ("tuneforge: error: 2 processes started by torchrun on 2 nodes need one run directory that all of "
               "them agree on, and this launch has no job id to name it after: set run_dir=<dir> on storage every "
               "node sees (or give torchrun --rdzv-id=<job id>)")
    for code, output in zip(codes, outputs):
        assert code != 0 and message in output.splitlines(), output[-2000:]
        assert "Traceback" not in output.split(message)[0]  # the worker's own error comes first, in one line
    assert not (tmp_path / "runs").exists()

    codes, outputs = _torchrun_nodes(tmp_path, [f"run_dir={tmp_path / 'run'}"], "rundir")
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert sum(output.count("run directory:") for output in outputs) == 1
    run = tmp_path / "run"
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert (run / "report.md").is_file() and len(train_losses(run)) == 2
    assert not (tmp_path / "runs").exists()  # no per-node timestamped directory either


def _ranks(world, node=0, env="TorchElasticEnvironment"):
    return ProcessRanks(node, 0, node, world, env)


@pytest.mark.parametrize("variables, ranks, nodes, expected", [
    ({}, _ranks(1, env="LightningEnvironment"), 1, None),  # one process
    ({}, _ranks(2, env="LightningEnvironment"), 1, None),  # Lightning's launcher passes its directory on
    ({"SLURM_JOB_ID": "77"}, _ranks(4, env="SLURMEnvironment"), 2, "runs/slurm-77"),
    ({"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"},
     _ranks(2, env="SLURMEnvironment"), 1, "runs/slurm-70_3"),
    ({"TORCHELASTIC_RUN_ID": "job-9"}, _ranks(2), 1, "runs/torchrun-job-9"),
    ({"TORCHELASTIC_RUN_ID": "job-9", "SLURM_JOB_ID": "77"}, _ranks(2), 2, "runs/slurm-77"),  # torchrun in sbatch
    ({"LSB_JOBID": "5"}, _ranks(2, env="LSFEnvironment"), 1, "runs/lsf-5"),
    ({"SLURM_JOB_ID": "77"}, _ranks(1, env="SLURMEnvironment"), 1, None),  # one srun task: nothing to agree on
])
def test_the_shared_run_directory_comes_from_the_job_id(monkeypatch, variables, ranks, nodes, expected):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert shared_run_dir(ranks, nodes) == expected


@pytest.mark.parametrize("ranks, nodes", [
    (_ranks(2), 1),  # torchrun --master_port=... (static rendezvous, id "none")
    (_ranks(2, node=1), 2),
    (_ranks(4, env="LightningEnvironment"), 2),  # NODE_RANK=... set by hand on two machines
    (_ranks(2, env="MPIEnvironment"), 1),
])
def test_a_multi_process_launch_without_job_id_must_name_its_run_dir(monkeypatch, ranks, nodes):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(tuneforge.ConfigError, match=r"set run_dir=<dir>") as caught:
        shared_run_dir(ranks, nodes)
    assert "\n" not in str(caught.value)


def test_ranks_that_would_resume_different_checkpoints_are_refused_in_one_line():
    assert check_resume_agreement([("/r", "step-00000004"), ("/r", "step-00000004")]) is None
    assert "different run directories" in check_resume_agreement([("/a", None), ("/b", None)])
    with pytest.raises(CheckpointError, match="disagree"):  # same name, other directories: other checkpoints
        check_resume_agreement([("/a", "step-00000004"), ("/b", "step-00000004")])
    with pytest.raises(CheckpointError) as caught:
        check_resume_agreement([("/r", "step-00000004"), ("/r", "step-00000004"), ("/other", None)])
    assert str(caught.value) == (
        "the processes disagree about what to resume (rank 0,1: step-00000004 in /r; rank 2: a fresh start in "
        "/other): give every process the same run_dir= on storage all of them see, or resume=never")


# ---------------------------------------------------------------------------
# The sampler never leaves a rank without a batch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(1, 12))
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_every_rank_gets_the_same_number_of_examples_and_all_are_seen(length, world):
    for shuffle in (False, True):
        shards = [list(ResumableSampler(length, seed=1, shuffle=shuffle, batch_size=2, rank=r, world_size=world))
                  for r in range(world)]
        per_rank = -(-length // world)
        assert [len(shard) for shard in shards] == [per_rank] * world
        assert all(len(ResumableSampler(length, 1, shuffle, 2, r, world)) == per_rank for r in range(world))
        seen = Counter(index for shard in shards for index in shard)
        assert set(seen) == set(range(length))  # every example, each at most ceil(world / length) times
        assert sum(seen.values()) - length == per_rank * world - length < world  # the documented repeats


def test_seven_examples_on_four_ranks_pad_by_repeating_one():
    order = ResumableSampler(7, seed=0, shuffle=True, batch_size=1).epoch_indices(0)
    shards = [ResumableSampler(7, seed=0, shuffle=True, batch_size=1, rank=r, world_size=4).epoch_indices(0)
              for r in range(4)]
    assert shards == [[order[0], order[4]], [order[1], order[5]], [order[2], order[6]], [order[3], order[0]]]


# ---------------------------------------------------------------------------
# Strategies that cannot run are refused before the model loads
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("override, line", [
    ("trainer.precision=16-mixed", "strategy=fsdp with trainer.precision=16-mixed: FSDP2 (Lightning's "
                                   "ModelParallelStrategy) takes 32-true, bf16-mixed, bf16-true, 16-true"),
    ("+strategy.kwargs.sharding_strategy=FULL_SHARD",
     "strategy.kwargs sharding_strategy: not options of strategy=fsdp (FSDP2, torch's fully_shard); valid: "
     "reshard_after_forward, process_group_backend")], ids=["precision", "fsdp1_kwargs"])
def test_what_fsdp_cannot_run_is_one_line_before_the_model_loads(tmp_path, override, line):
    result = run_cli(["train", "strategy=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", override,
                      f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"tuneforge: error: {line}"]
    assert not (tmp_path / "config.yaml").exists()  # refused before the run directory was written


@pytest.mark.parametrize("preset", ["deepspeed_stage_2", "deepspeed_stage_3"])
def test_deepspeed_without_the_package_names_the_install_command(tmp_path, preset):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    result = run_cli(["train", f"strategy={preset}", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tuneforge: error: strategy={preset} needs the deepspeed package, which is not installed: "
        "pip install 'tuneforge[deepspeed]' (DeepSpeed runs on CUDA GPUs only)"]
    assert not (tmp_path / "config.yaml").exists()


# ---------------------------------------------------------------------------
# A failure of one rank stops every rank (no rank waits for a rank that is gone)
# ---------------------------------------------------------------------------

#: holds a run directory's lock the way a live `tuneforge train` does
HOLD_LOCK = ("import sys, time; from tuneforge.training.run_lock import RunLock; "
             "lock = RunLock(sys.argv[1], 'train').acquire(); print('held', flush=True); time.sleep(300)")


def _error_lines(output: str) -> list:
    return [line for line in output.splitlines() if line.startswith("tuneforge: error:")]


@pytest.mark.fault(fault="the same srun job submitted twice (the run directory is in use)",
                   outcome="every task of the second job stops within seconds with one line: rank 0 names the "
                           "run holding the directory, the other ranks name rank 0 and its error")
def test_a_duplicate_srun_job_ends_all_its_tasks_within_60_s_each_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first_job = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert first_job.stdout.readline().strip() == "held"
        args = ["train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2",
                "trainer.enable_progress_bar=false", "threads=1", "evaluators=[]", f"run_dir={run_dir}"]
        started = time.monotonic()
        codes, outputs = _wait(_srun_tasks(tmp_path, args, "duplicate"), timeout=60)
        took = time.monotonic() - started
    finally:
        first_job.kill()
        first_job.wait()
    assert took < 60 and codes == [2, 2], (codes, outputs)
    rank0, rank1 = (_error_lines(output) for output in outputs)
    assert len(rank0) == 1 and f"is in use by tuneforge train (pid {first_job.pid}" in rank0[0], outputs[0]
    assert len(rank1) == 1, outputs[1]
    assert "rank 1 of 2 stops: rank 0 could not start the run: run_dir=" in rank1[0] and "is in use" in rank1[0]
    assert "Traceback" not in outputs[0] + outputs[1]
    assert not (run_dir / "config.yaml").exists()  # nothing of the second job was written


@pytest.mark.fault(fault="a rank that never arrives (its task did not start, or died before the meeting)",
                   outcome="the ranks that did arrive stop after trainer.collective_timeout_s with one line "
                           "naming the rank that did not arrive")
def test_a_rank_that_never_arrives_is_named_after_the_collective_timeout(tmp_path):
    base = _clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env = dict(base, **SRUN, SLURM_PROCID="1", SLURM_LOCALID="1")  # rank 1 alone: rank 0 never comes
    args = ["train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2",
            "trainer.collective_timeout_s=3", "threads=1", "evaluators=[]", f"run_dir={tmp_path / 'run'}"]
    started = time.monotonic()
    result = subprocess.run([*TUNEFORGE, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _error_lines(result.stderr)
    assert lines == [f"tuneforge: error: rank 1 of 2: rank 0 did not arrive at 127.0.0.1:{base['MASTER_PORT']} "
                     "within 3 s (trainer.collective_timeout_s); see rank 0's output (it may have stopped, or not "
                     "started)"], result.stderr[-3000:]
    assert time.monotonic() - started < 60


def test_a_collective_broken_by_a_lost_rank_is_one_line_naming_the_phase(tmp_path):
    from tuneforge.context import RunContext
    from tuneforge.training.run_stop import lost_ranks as _lost_ranks

    context = RunContext(run_dir=tmp_path, global_rank=1, world_size=2)
    lost = _lost_ranks(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
                                    "peer [127.0.0.1]:40123\nmore torch detail"), context, "evaluating the base model",
                       1800)
    assert str(lost) == ("rank 1 of 2 stops while evaluating the base model: another rank stopped, or did not answer "
                         "within 1800 s (trainer.collective_timeout_s); see the other ranks' output "
                         "([../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                         "[127.0.0.1]:40123)")
    assert _lost_ranks(RuntimeError("CUDA out of memory"), context, "training", 1800) is None
    assert _lost_ranks(RuntimeError("Connection closed by peer"), RunContext(run_dir=tmp_path), "training", 1) is None


@pytest.mark.fault(fault="one task of a 2-task srun DDP job SIGKILLed mid-training",
                   outcome="the other rank stops at its next collective with one line naming the lost rank and the "
                           "phase; status.json says failed")
def test_a_rank_killed_mid_run_is_named_by_the_rank_that_stays(tmp_path):
    """Two simulated srun tasks (independent processes, as on a cluster); rank 1 is SIGKILLed at step 3, rank 0
    stops at its next collective with one line naming rank 1."""
    args = [*DDP_RUN[1:], f"callbacks.batch_log.path={tmp_path / 'batches.log'}", "callbacks.batch_log.kill_at_step=3",
            "callbacks.batch_log.kill_rank=1", "trainer.collective_timeout_s=60", f"run_dir={tmp_path / 'run'}"]
    codes, outputs = _wait(_srun_tasks(tmp_path, ["train", *args], "lost"), timeout=240)
    assert codes[1] == -signal.SIGKILL and codes[0] == 2, (codes, outputs[0][-3000:])
    lines = _error_lines(outputs[0])
    assert len(lines) == 1 and lines[0].startswith(
        "tuneforge: error: rank 0 of 2 stops while training: rank 1 is gone (no sign of life for 3 s: killed, out "
        "of memory, or its node was lost); see its output ("), outputs[0][-3000:]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_the_rank_watch_names_a_silent_rank_a_stopped_rank_and_a_lost_store():
    import socket

    from torch.distributed import TCPStore

    from tuneforge.training import rank_watch
    from tuneforge.training.rank_watch import RankWatch

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = TCPStore("127.0.0.1", port, 3, True, wait_for_workers=False)
    clients = [TCPStore("127.0.0.1", port, 3, False) for _ in range(2)]
    watches = [RankWatch(store, rank, 3, beat_s=0.05).start() for rank, store in enumerate([host, *clients])]
    assert watches[0].describe_lost() is None and watches[2].describe_lost() is None  # all alive
    watches[1].close()  # rank 1 goes silent (as if killed)
    watches[2].post_stopped("tuneforge: error: data.path: no such file")
    watches[2].close()
    silent_s = 0.05 * rank_watch.SILENT_BEATS
    assert watches[0].describe_lost() == (
        f"rank 2 stopped: tuneforge: error: data.path: no such file; rank 1 is gone (no sign of life for {silent_s:g} "
        "s: killed, out of memory, or its node was lost)")
    watches[0].close()
    del watches, host  # rank 0's store goes with it
    import gc

    gc.collect()
    survivor = RankWatch(clients[1], 2, 3, beat_s=0.05)
    assert survivor.describe_lost() == "rank 0 is gone (the job's store it hosted no longer answers)"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_collective_timeout_reaches_the_strategy_and_strategy_kwargs_timeout_is_refused(strategy, tmp_path):
    from tuneforge.host.components import run_settings
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.training.trainer import build_trainer, check_strategy

    overrides = [f"strategy={strategy}", "trainer.accelerator=cpu", "trainer.devices=1",
                 "trainer.collective_timeout_s=7.5"]
    load_plugins(overrides)
    settings = run_settings(compose(overrides))
    trainer = build_trainer(settings.trainer, settings.strategy, tmp_path, [])
    assert trainer.strategy._timeout.total_seconds() == 7.5
    refused = run_settings(compose([*overrides, "+strategy.kwargs.timeout=60"]))
    with pytest.raises(tuneforge.ConfigError, match=r"^strategy.kwargs.timeout: the collective timeout is "
                                                    r"trainer.collective_timeout_s=<seconds> \(now 7.5\)"):
        check_strategy(refused.strategy, refused.trainer, refused.checkpoint)


@pytest.mark.fault(fault="SIGTERM while a rank waits at the start meeting for the others",
                   outcome="the wait ends within a second and the run stops `interrupted` with the phase "
                           "(waiting for the other ranks to start); during the store rendezvous itself the "
                           "process ends at once (the system's default action)")
def test_a_rank_waiting_at_the_meeting_stops_at_once_on_sigterm():
    # rank 1 never posts: rank 0 waits at most collective_timeout_s (30 s here), but a SIGTERM ends the
    # wait within about a second (the store is polled in slices, so the run's handler gets to run)
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    from tuneforge.training.rank_agreement import RankMeeting
    from tuneforge.training.run_stop import StopSignal, signals_stop_the_run

    store = dist.TCPStore("127.0.0.1", 0, 1, True, timedelta(seconds=30), wait_for_workers=False)
    meeting = RankMeeting(store, rank=0, world_size=2, timeout_s=30)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    with signals_stop_the_run():
        timer.start()
        with pytest.raises(StopSignal):
            meeting.agree()
    assert time.monotonic() - started < 5


def test_a_rank_that_never_posts_is_named_after_the_timeout():
    from datetime import timedelta

    import torch.distributed as dist

    from tuneforge.training.rank_agreement import RankMeeting, RanksDisagree

    store = dist.TCPStore("127.0.0.1", 0, 1, True, timedelta(seconds=30), wait_for_workers=False)
    started = time.monotonic()
    with pytest.raises(RanksDisagree, match=r"^rank 0 of 3: rank\(s\) 1, 2 did not arrive within 2 s"):
        RankMeeting(store, rank=0, world_size=3, timeout_s=2).agree()
    assert 1.5 < time.monotonic() - started < 6


# ---------------------------------------------------------------------------
# The processes a launcher started against trainer.devices (before any model loads)
# ---------------------------------------------------------------------------


def _launched(environment, world, local_rank=0, node=0):
    from tuneforge.context import RunContext

    return RunContext(run_dir=".", global_rank=node * 2 + local_rank, local_rank=local_rank, node_rank=node,
                      world_size=world, cluster_environment=environment)


def _trainer(devices, nodes=1):
    from types import SimpleNamespace

    return SimpleNamespace(devices=devices, num_nodes=nodes, accelerator="cpu")


@pytest.mark.parametrize("variables, devices, nodes, line", [
    # torchrun --nproc_per_node=2 with the default trainer.devices=auto: Lightning takes 1 CPU device and
    # raised "the product (1 * 1) does not match the world size (2)" after the base evaluation
    ({"LOCAL_WORLD_SIZE": "2"}, "auto", 1,
     ("torchrun started 2 process(es) (2 on this node) but trainer.devices=auto is 1 per node here (the CPU counts "
      "as one device) x trainer.num_nodes=1 = 1; set trainer.devices=2 (the processes per node), or launch with "
      "'torchrun --nproc_per_node=1 --nnodes=1 -m tuneforge train ...'")),
    # devices x nodes = 2 = the processes, but both on one node: Lightning's IndexError for local rank 1
    ({"LOCAL_WORLD_SIZE": "2"}, 1, 2,
     ("torchrun started 2 process(es) (2 on this node) but trainer.devices=1 takes 1 per node on "
      "trainer.num_nodes=2; launch with 'torchrun --nproc_per_node=1 --nnodes=2 -m tuneforge train ...', or set "
      "trainer.devices=2 trainer.num_nodes=1")),
    ({}, 1, 2,  # no LOCAL_WORLD_SIZE: this process's local rank tells
     ("torchrun started 2 process(es) (this one has local rank 1) but trainer.devices=1 takes 1 per node on "
      "trainer.num_nodes=2; launch with 'torchrun --nproc_per_node=1 --nnodes=2 -m tuneforge train ...', or set "
      "trainer.devices to the processes per node and trainer.num_nodes to the nodes")),
])
def test_a_launch_that_trainer_devices_does_not_match_is_one_line_before_the_model_loads(
        monkeypatch, variables, devices, nodes, line):
    from tuneforge.training.trainer import check_launch

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(tuneforge.ConfigError) as info:
        check_launch(_launched("TorchElasticEnvironment", 2, local_rank=1), _trainer(devices, nodes))
    assert str(info.value) == line


def test_a_launch_that_matches_trainer_devices_passes_and_slurm_tasks_per_node_are_read(monkeypatch):
    from tuneforge.training.trainer import check_launch

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_launch(_launched("TorchElasticEnvironment", 2, local_rank=1), _trainer(2))
    check_launch(_launched("TorchElasticEnvironment", 2, local_rank=1), _trainer([0, 1]))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    check_launch(_launched("TorchElasticEnvironment", 2, node=1), _trainer("auto", 2))  # 1 CPU device per node
    monkeypatch.delenv("SLURM_STEP_TASKS_PER_NODE", raising=False)
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x2)")  # srun --nodes=2 --ntasks-per-node=2
    check_launch(_launched("SLURMEnvironment", 4, node=1), _trainer(2, 2))
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "3,1")  # 4 tasks, 3 on node 0: devices=2 x 2 nodes = 4 all the same
    with pytest.raises(tuneforge.ConfigError, match=r"^SLURM started 4 process\(es\) \(3 on this node\) but "
                                                    r"trainer.devices=2 takes 2 per node"):
        check_launch(_launched("SLURMEnvironment", 4), _trainer(2, 2))


# ---------------------------------------------------------------------------
# One meeting per run, and a rank that stops before it is told to the others
# ---------------------------------------------------------------------------


def test_each_run_of_a_process_meets_at_the_same_store_under_keys_of_its_own(monkeypatch):
    """The second run of a process (evidence.seeds=2, a sweep's second job) meets again: it must not read
    the first run's outcomes, nor host a second store on rank 0's port (the other ranks found the old one,
    and rank 0 waited for them at the new one until trainer.collective_timeout_s)."""
    import threading
    from types import SimpleNamespace

    from tuneforge.training import rank_agreement
    from tuneforge.training.rank_agreement import RanksDisagree, meet_ranks

    port = _free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setattr(rank_agreement, "_STORES", {})
    counts = {0: [0], 1: [0]}  # each "process" (a thread here) counts its own meetings

    def rank(number, failures, results):
        context = SimpleNamespace(global_rank=number, world_size=2, set_main_address=lambda: f"127.0.0.1:{port}")
        for failure in failures:
            monkeypatch.setattr(rank_agreement, "_MEETINGS", counts[number])
            try:
                meet_ranks(context, 20).agree(failure=failure)
                results.append("ok")
            except RanksDisagree as exc:
                results.append(str(exc))

    results = {0: [], 1: []}
    threads = [threading.Thread(target=rank, args=(0, [None, None], results[0])),
               threading.Thread(target=rank, args=(1, [None, "data.path: no such file"], results[1]))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(60)
    assert results[0] == ["ok", "rank 0 of 2 stops: rank 1 could not start the run: data.path: no such file"]
    assert results[1] == ["ok", "ok"]  # (the rank that failed reports its own error itself)
    assert time.monotonic() - started < 15


@pytest.mark.fault(fault="one task of a 2-task srun DDP job stops before the ranks meet (its run_dir cannot be "
                         "made on its node), the other one is healthy",
                   outcome="both stop within seconds, not after trainer.collective_timeout_s: the failing task "
                           "with its own line, the other naming it and its line")
@pytest.mark.parametrize("failing", [0, 1])
def test_a_rank_that_stops_before_the_meeting_stops_the_others_at_once(tmp_path, failing):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    base = _clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    args = ["train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2",
            "trainer.collective_timeout_s=600", "threads=1", "evaluators=[]"]
    tasks = []
    started = time.monotonic()
    for rank in (0, 1):
        run_dir = blocker / "run" if rank == failing else tmp_path / "run"  # below a file: cannot be made
        err = tmp_path / f"task{rank}.err"
        with err.open("w") as out:
            tasks.append((subprocess.Popen([*TUNEFORGE, *args, f"run_dir={run_dir}"], cwd=tmp_path, stdout=out,
                                           stderr=subprocess.STDOUT, text=True,
                                           env=dict(base, **SRUN, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))),
                          err))
    codes, outputs = _wait(tasks, timeout=240)
    assert time.monotonic() - started < 120 and codes == [2, 2], (codes, outputs)
    own = f"tuneforge: error: run_dir={blocker / 'run'}: {blocker} is a file, so the directory cannot be created"
    assert _error_lines(outputs[failing]) == [own], outputs[failing][-2000:]
    other = 1 - failing
    assert _error_lines(outputs[other]) == [
        f"tuneforge: error: rank {other} of 2 stops: rank {failing} could not start the run: {own[18:]}"
    ], outputs[other][-2000:]
    assert "Traceback" not in outputs[0] + outputs[1]


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
def test_evidence_seeds_under_srun_meet_once_per_seed_and_complete(tmp_path):
    args = ["train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2",
            "trainer.collective_timeout_s=60", "trainer.enable_progress_bar=false", "threads=1", "evaluators=[]",
            "baselines=[]", "evidence.seeds=2", f"run_dir={tmp_path / 'run'}"]
    codes, outputs = _wait(_srun_tasks(tmp_path, args, "seeds"), timeout=240)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    for seed in sorted((tmp_path / "run").glob("seed-*")):
        assert json.loads((seed / "status.json").read_text())["status"] == "completed"
    assert len(list((tmp_path / "run").glob("seed-*"))) == 2 and (tmp_path / "run" / "seeds.json").is_file()


def test_the_resume_command_of_a_multi_node_launch_says_to_launch_it_on_every_node():
    """Printed alone, the resume command of a 2-node torchrun run, pasted on one machine, started one process
    that waited for the other node until trainer.collective_timeout_s."""
    from tuneforge.training.launch import relaunch_note

    assert relaunch_note(_launched("TorchElasticEnvironment", 2), 2) == (
        "\nThis run spans 2 nodes: launch that command as before, on every node (torchrun --nnodes=2 "
        "--nproc_per_node=1 <the same rendezvous flags> -m tuneforge train <the arguments above>); run alone on one "
        "machine it would wait for the other nodes")
    assert "(srun --nodes=2 --ntasks-per-node=4 tuneforge train" in relaunch_note(_launched("SLURMEnvironment", 8), 2)
    assert relaunch_note(_launched("TorchElasticEnvironment", 2), 1) == ""  # one node: the command starts them
    assert relaunch_note(_launched("LightningEnvironment", 2), 1) == ""


@pytest.mark.fault(fault="one process of a `torchrun --nproc_per_node=2` DDP run SIGKILLed mid-training (torchrun "
                         "then sends SIGTERM to the other one at once)",
                   outcome="the other rank stops within seconds with one line naming the lost rank (or that the "
                           "launcher stopped it while it looked for it); status.json says failed with that line "
                           "(before: an error of null and 'interrupted by SIGTERM after its run ended')")
def test_a_torchrun_worker_killed_mid_run_leaves_the_others_line_in_status_json(tmp_path):
    args = [*DDP_RUN[1:], f"callbacks.batch_log.path={tmp_path / 'batches.log'}", "callbacks.batch_log.kill_at_step=3",
            "callbacks.batch_log.kill_rank=1", f"run_dir={tmp_path / 'run'}"]
    env = _clean_env(PYTHONPATH=os.pathsep.join([str(FIXTURES / "steplog"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "tuneforge", "train", *args]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    lines = _error_lines(result.stdout + result.stderr)
    assert len(lines) == 1 and lines[0].startswith("tuneforge: error: rank 0 of 2 stops while training: "), \
        (result.stdout + result.stderr)[-3000:]
    assert "rank 1 is gone" in lines[0] or "SIGTERM came while this rank looked for the rank that is gone" in lines[0]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == lines[0][len("tuneforge: error: "):]
    assert "after its run ended" not in result.stdout + result.stderr


def test_the_rank_watch_names_the_lost_rank_when_a_stop_signal_ends_its_wait():
    import threading

    from torch.distributed import TCPStore

    from tuneforge.training.rank_watch import RankWatch
    from tuneforge.training.run_stop import signals_stop_the_run

    port = _free_port()
    host = TCPStore("127.0.0.1", port, 2, True, wait_for_workers=False)
    other = RankWatch(TCPStore("127.0.0.1", port, 2, False), 1, 2, beat_s=0.05).start()
    other.close()  # rank 1 goes silent
    for delay, expected in [(0.02, "SIGTERM came while this rank looked for the rank that is gone"),
                            (0.3, "rank 1 is gone (no sign of life for 0.")]:
        watch = RankWatch(host, 0, 2, beat_s=0.1 if delay > 0.1 else 1.0)  # the wait: 6 beats, 0.6 s or 6 s
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
        with signals_stop_the_run():
            timer.start()
            described = watch.describe_lost()
        assert expected in described, described
        assert "a launcher" in described
