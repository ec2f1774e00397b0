"""A data-efficiency sweep (Hydra multirun over data.max_examples) compared with `tuneforge compare`."""

import json
import statistics
from pathlib import Path

import pytest
from matplotlib.image import imread

from helpers import run_cli


def test_sweep_over_max_examples_then_compare(tmp_path):
    from tuneforge.evaluation.uncertainty import p_value_test

    sweep_dir, cwd = tmp_path / "sweep", tmp_path / "cwd"
    cwd.mkdir()
    sweep = run_cli(["train", "-m", "data.max_examples=8,40", "trainer.max_steps=3",
                     "trainer.enable_progress_bar=false", "threads=1", f"hydra.sweep.dir={sweep_dir}"])
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert sweep.stdout.count("run directory:") == 2
    compared = run_cli(["compare", str(sweep_dir)], cwd=cwd)
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    # the swept setting is a column of its own (from each run's config.yaml)
    assert lines[0].split()[:5] == ["run", "data.max_examples", "train", "examples", "steps"]
    assert [line.split()[1] for line in lines[1:3]] == ["8", "40"]  # sorted by training examples
    # every column of every run (base, each baseline, tuned) and the run's verdict
    header = [cell.strip() for cell in lines[0].split("  ") if cell.strip()]
    assert header[4:8] == [f"perplexity/loss {c}" for c in ("base", "few_shot", "retrieval", "tuned")]
    assert header[-1] == "verdict"
    verdict = json.loads((sweep_dir / "0" / "metrics.json").read_text())["verdict"]
    test = p_value_test(verdict.get("method"))
    p = f"; {test + ' ' if test else ''}p={verdict['p_value']:.2g}" if verdict.get("p_value") is not None else ""
    assert lines[1].endswith(f"{verdict['outcome'].replace('_', ' ')} ({verdict['change']:+.4g} vs "
                             f"{verdict['baseline_label']}, 95% CI {verdict['low']:+.4g}..{verdict['high']:+.4g}{p})")
    # a new folder in the working directory; nothing written into the sweep or its runs
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml"]
    [out] = cwd.iterdir()
    assert out.name.startswith("compare-") and compared.stdout.rstrip().endswith(str(out / "comparison.md"))
    markdown = (out / "comparison.md").read_text()
    assert "| 0 | 8 | 8 | 3 |" in markdown and "![data efficiency](data_efficiency.png)" in markdown
    assert (out / "data_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(out / "data_efficiency.png").shape[0] > 100
    again = run_cli(["compare", str(sweep_dir), f"out={tmp_path / 'mine'}"], cwd=cwd)
    assert again.returncode == 0 and (tmp_path / "mine" / "comparison.md").read_text() == markdown
    assert len(list(cwd.iterdir())) == 1


def _write_run(folder: Path, seed: int, examples: int, tuned: float, forgetting: float, low=None, high=None):
    """A finished run's metrics.json and config.yaml, as train writes them (a task and a forgetting metric)."""
    folder.mkdir(parents=True)
    metrics = {"data": {"train_examples": examples}, "steps": 10,
               "base": {"exact_match": 0.1, "forgetting/exact_match": 0.8},
               "baselines": {"retrieval": {"exact_match": 0.3}},
               "baseline_info": {"retrieval": {"name": "retrieval", "label": "retrieval, k=4"}},
               "tuned": {"exact_match": tuned, "forgetting/exact_match": forgetting},
               "metric_info": {"exact_match": {"section": "held-out", "primary": True},
                               "forgetting/exact_match": {"section": "forgetting"}},
               "verdict": {"outcome": "tune", "metric": "exact_match", "baseline": "retrieval",
                           "baseline_label": "retrieval, k=4", "change": tuned - 0.3, "share": True}}
    if low is not None:
        metrics["intervals"] = {"tuned": {"exact_match": {"low": low, "high": high, "n": 30}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(f"seed: {seed}\nrun_dir: {folder}\ndata:\n  max_examples: {examples}\n")


def test_runs_that_differ_only_by_seed_are_folded_and_forgetting_gets_its_own_panel(tmp_path):
    from tuneforge.commands.compare import data_efficiency_figure, format_table, group_runs, load_rows

    for i, (seed, tuned, forgetting) in enumerate([(1, 0.8, 0.7), (2, 0.9, 0.6), (3, 0.7, 0.8)]):
        _write_run(tmp_path / f"a{i}", seed, 20, tuned, forgetting)
    _write_run(tmp_path / "b", 1, 40, 0.95, 0.75, low=0.9, high=1.0)
    rows = load_rows([tmp_path / name for name in ("b", "a2", "a0", "a1")])
    groups = group_runs(rows)
    assert [[Path(r["run"]).name for r in g] for g in groups] == [["a0", "a1", "a2"], ["b"]]
    table = format_table(rows)
    assert table[0][:4] == ["run", "data.max_examples", "seed", "train examples"]
    assert table[0][5:] == ["exact_match base", "exact_match retrieval", "exact_match tuned",
                            "forgetting/exact_match base", "forgetting/exact_match retrieval",
                            "forgetting/exact_match tuned", "verdict"]
    mean_row = table[4]
    assert mean_row[:5] == ["mean of 3 runs", "20", "1,2,3", "20", "10"]
    assert mean_row[7] == f"0.8000 (sd {statistics.stdev([0.8, 0.9, 0.7]):.4f})"
    assert mean_row[-1] == "tune 3/3"
    assert table[1][-1] == "tune (+50.0 points vs retrieval, k=4)"
    assert table[5][7] == "0.9500 [0.9000, 1.0000]"  # one run: its interval

    figure = data_efficiency_figure(rows)
    task, forgetting_axes = figure.axes
    assert (task.get_title(), forgetting_axes.get_title()) == ("held-out", "forgetting")
    assert [c.get_label().split(" (")[0] for c in task.containers] == ["exact_match"] * 3  # base, retrieval, tuned
    assert [c.get_label() for c in forgetting_axes.containers] == ["forgetting/exact_match (base)",
                                                                   "forgetting/exact_match (tuned, mean, sd over "
                                                                   "seeds; one run: 95% CI)"]
    # the tuned line: the mean of the seeds with one standard deviation as error bars, one run's interval
    tuned = [c for c in task.containers if c.get_label().startswith("exact_match (tuned")]
    assert len(tuned) == 1
    xs, ys = tuned[0].lines[0].get_data()
    assert list(xs) == [20, 40] and list(ys) == pytest.approx([0.8, 0.95])
    segments = tuned[0].lines[2][0].get_segments()
    sd = statistics.stdev([0.8, 0.9, 0.7])
    assert [tuple(s[:, 1]) for s in segments] == [pytest.approx((0.8 - sd, 0.8 + sd)), pytest.approx((0.9, 1.0))]
    assert "mean, sd over seeds; one run: 95% CI" in tuned[0].get_label()


def test_a_sliced_run_gets_its_table_per_value_in_print_and_in_comparison_md(tmp_path, capsys):
    from test_report import _sliced_run

    from tuneforge.commands.compare import compare_command

    sliced = _sliced_run()
    _write_run(tmp_path / "plain", 1, 20, 0.8, 0.7)
    (tmp_path / "sliced").mkdir()
    (tmp_path / "sliced" / "metrics.json").write_text(json.dumps(dict(sliced, data={"train_examples": 90}, steps=10)))
    compare_command([str(tmp_path / "plain"), str(tmp_path / "sliced"), f"out={tmp_path / 'out'}"])
    printed = capsys.readouterr().out.splitlines()
    start = printed.index("sliced: by label (exact_match); per-slice n is small, so each verdict is weaker than "
                          "the run's:")
    assert printed[start + 1].startswith("  label ")  # indented under its title
    header = [cell.strip() for cell in printed[start + 1].split("  ") if cell.strip()]
    assert header == ["label", "n", "base (zero-shot)", "retrieval, k=4", "few_shot, k=4", "tuned", "verdict"]
    assert printed[start + 2].split() == ["class0", "6", "0.0%", "50.0%", "66.7%", "100.0%", "inconclusive"]
    assert printed[start + 6].split()[:6] == ["class4", "6", "0.0%", "50.0%", "66.7%", "33.3%"]
    assert not any(line.startswith("plain: by") for line in printed)  # a run without slices has none
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "## By slice (evidence.slice_by)" in markdown and "### sliced: by label (exact_match)" in markdown
    assert "| label | n | base (zero-shot) | retrieval, k=4 | few_shot, k=4 | tuned | verdict |" in markdown
    assert "| class4 | 6 | 0.0% | 50.0% | 66.7% | 33.3% | inconclusive |" in markdown


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


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
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
    compared = run_cli(["compare", str(sweep_dir)], cwd=tmp_path)
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
    compared = run_cli(["compare", str(sweep_dir)], cwd=tmp_path)
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
    _check_a_sweep_with_one_failing_job(tmp_path, [])


def test_a_failing_submitit_sweep_job_is_recorded_and_the_others_run(tmp_path):
    """The same with hydra/launcher=submitit_local: each job is a process of its own, whose output goes to
    submitit's logs; the sweep's own process reads the failed job's status.json back."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _check_a_sweep_with_one_failing_job(tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"])


def _check_a_sweep_with_one_failing_job(tmp_path, launcher: list) -> None:
    import json

    import tuneforge.plugins

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": 3}\n')
    good = Path(tuneforge.plugins.__file__).parent / "data" / "sample.jsonl"
    sweep_dir = tmp_path / "sweep"
    sweep = run_cli(["train", "-m", *launcher, f"data.path={bad},{good}", "trainer.max_steps=1",
                     "trainer.enable_progress_bar=false", "threads=1", "evaluators=[]", "baselines=[]",
                     f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=300)
    assert sweep.returncode == 2, sweep.stderr[-3000:]
    if not launcher:
        assert sweep.stdout.count("run directory:") == 1  # job 1 ran to the end
    else:
        assert (sweep_dir / ".submitit").is_dir()  # the jobs ran through submitit
    status = json.loads((sweep_dir / "0" / "status.json").read_text())
    assert status["status"] == "failed" and f"{bad}:2" in status["error"], status
    summary = sweep.stderr.strip().splitlines()[-1]
    assert summary == (f"tuneforge: error: sweep job 0 (data.path={bad}) failed: {status['error']} "
                       f"[{sweep_dir / '0'}]"), sweep.stderr[-3000:]
    assert json.loads((sweep_dir / "1" / "status.json").read_text())["status"] == "completed"
    compared = run_cli(["compare", str(sweep_dir), f"out={tmp_path / 'compared'}"], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert f"FAILED  0  {status['error']}" in compared.stdout.splitlines()
    assert f"- FAILED `0`: {status['error']}" in (tmp_path / "compared" / "comparison.md").read_text()
