"""A data-efficiency sweep (Hydra multirun over data.max_examples) compared with `tuneforge compare`."""

from pathlib import Path

import pytest
from matplotlib.image import imread

from helpers import run_cli


def test_sweep_over_max_examples_then_compare(tmp_path):
    sweep = run_cli(["train", "-m", "data.max_examples=8,40", "trainer.max_steps=3",
                     "trainer.enable_progress_bar=false", "threads=1", f"hydra.sweep.dir={tmp_path}"])
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert sweep.stdout.count("run directory:") == 2
    compared = run_cli(["compare", str(tmp_path)])
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    # the swept setting is a column of its own (from each run's config.yaml)
    assert lines[0].split()[:5] == ["run", "data.max_examples", "train", "examples", "steps"]
    assert [line.split()[1] for line in lines[1:3]] == ["8", "40"]  # sorted by training examples
    markdown = (tmp_path / "comparison.md").read_text()
    assert "| 0 | 8 | 8 | 3 |" in markdown and "![data efficiency](data_efficiency.png)" in markdown
    assert (tmp_path / "data_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(tmp_path / "data_efficiency.png").shape[0] > 100


def test_compare_names_a_folder_without_runs(tmp_path):
    result = run_cli(["compare", str(tmp_path)])
    assert result.returncode == 2
    assert result.stderr.strip() == f"tuneforge: error: compare: no completed run (metrics.json) in {tmp_path} or its subfolders"


def test_the_plot_follows_the_saved_metric_info():
    from tuneforge.commands.compare import plotted_metrics

    def row(info):
        return {"base": {}, "tuned": {"exact_match": 0.5, "perplexity/loss": 2.0, "my/score": 0.1},
                "metric_info": info}

    lower = {"higher_is_better": False, "is_loss": True}
    assert plotted_metrics([row({"perplexity/loss": lower})]) == ["exact_match", "my/score"]  # losses left out
    assert plotted_metrics([row({"perplexity/loss": lower, "my/score": {"primary": True}})]) == ["my/score"]
    assert plotted_metrics([row({})]) == ["exact_match", "my/score", "perplexity/loss"]  # no info: all scores
    everything_lower = {n: lower for n in ("exact_match", "perplexity/loss", "my/score")}
    assert plotted_metrics([row(everything_lower)]) == ["exact_match", "my/score", "perplexity/loss"]


def test_sweep_with_two_process_ddp_runs_each_job_once(tmp_path):
    """`-m` with strategy=ddp trainer.devices=2: each job's second process starts from that job's own
    overrides (never a sweep of its own), so there are exactly two runs and nothing stray."""
    sweep_dir, cwd = tmp_path / "sweep", tmp_path / "cwd"
    cwd.mkdir()
    sweep = run_cli(["train", "-m", "optim.lr=1e-3,1e-2", "strategy=ddp", "trainer.accelerator=cpu",
                     "trainer.devices=2", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "threads=1",
                     f"hydra.sweep.dir={sweep_dir}"], timeout=240, cwd=cwd)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert sweep.stdout.count("run directory:") == 2
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    assert [p.name for p in sweep_dir.glob("*/report.md")] == ["report.md"] * 2
    assert list(cwd.iterdir()) == []  # no stray run or sweep directory from a child
    compared = run_cli(["compare", str(sweep_dir)])
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0].split()[:2] == ["run", "optim.lr"]
    assert sorted(line.split()[1] for line in lines[1:3]) == ["0.001", "0.01"]


def test_submitit_local_sweep_then_compare(tmp_path):
    """hydra/launcher=submitit_local: each job runs as its own process; compare reads the sweep."""
    import pytest

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    sweep = run_cli(["train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                     "adapter.r=2,4", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "threads=1",
                     f"hydra.sweep.dir={sweep_dir}"], timeout=240, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json")) == ["0", "1"]
    assert (sweep_dir / ".submitit").is_dir()  # the jobs ran through submitit
    compared = run_cli(["compare", str(sweep_dir)])
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0].split()[:2] == ["run", "adapter.r"]
    assert sorted(line.split()[1] for line in lines[1:3]) == ["2", "4"]


def test_slurm_preset_sizes_the_job_from_the_trainer():
    import pytest

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    shown = run_cli(["train", "hydra/launcher=tuneforge_slurm", "trainer.devices=4", "trainer.num_nodes=2",
                     "--cfg", "all", "--resolve"])
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "SlurmLauncher" in shown.stdout
    assert "tasks_per_node: 4" in shown.stdout and "    nodes: 2" in shown.stdout


@pytest.mark.fault(fault="one job of a `-m` sweep fails in the run (its data file is malformed)",
                   outcome="the other jobs run; the failed job's status.json holds its one line; the sweep ends "
                           "with one line per failed job (exit 2); `tuneforge compare` lists it as FAILED")
def test_a_failing_sweep_job_is_recorded_the_others_run_and_compare_marks_it(tmp_path):
    import json

    import tuneforge.plugins

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": 3}\n')
    good = Path(tuneforge.plugins.__file__).parent / "data" / "sample.jsonl"
    sweep_dir = tmp_path / "sweep"
    sweep = run_cli(["train", "-m", f"data.path={bad},{good}", "trainer.max_steps=1", "trainer.enable_progress_bar=false",
                     "threads=1", "evaluators=[]", "baselines=[]", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert sweep.returncode == 2, sweep.stderr[-3000:]
    assert sweep.stdout.count("run directory:") == 1  # job 1 ran to the end
    status = json.loads((sweep_dir / "0" / "status.json").read_text())
    assert status["status"] == "failed" and f"{bad}:2" in status["error"], status
    summary = sweep.stderr.strip().splitlines()[-1]
    assert summary == (f"tuneforge: error: sweep job 0 (data.path={bad}) failed: {status['error']} "
                       f"[{sweep_dir / '0'}]"), sweep.stderr[-3000:]
    assert json.loads((sweep_dir / "1" / "status.json").read_text())["status"] == "completed"
    compared = run_cli(["compare", str(sweep_dir)])
    assert compared.returncode == 0, compared.stderr
    assert f"FAILED  0  {status['error']}" in compared.stdout.splitlines()
    assert f"- FAILED `0`: {status['error']}" in (sweep_dir / "comparison.md").read_text()
