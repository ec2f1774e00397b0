"""evidence.seeds=N: N runs with seeds seed, seed+1, ... folded into mean, spread and a verdict across seeds
(tuneforge.evaluation.seeds.fold_seed_runs), a rerun that skips completed seeds, and compare's seed rows."""

import json
import shutil
import statistics

import pytest

from helpers import run_cli

FAST = ["trainer.max_steps=3", "trainer.enable_progress_bar=false", "threads=1"]


def _columns(metrics):
    return {"base": metrics["base"], **metrics["baselines"], "tuned": metrics["tuned"]}


def test_three_seeds_on_the_tiny_model_fold_into_mean_spread_and_a_verdict(tmp_path):
    run_dir, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    trained = run_cli(["train", *FAST, "evidence.seeds=3", f"run_dir={run_dir}"], cwd=cwd)
    assert trained.returncode == 0, trained.stderr[-3000:]
    seed_dirs = [run_dir / f"seed-{seed}" for seed in (42, 43, 44)]
    for seed, seed_dir in zip((42, 43, 44), seed_dirs):  # each a complete run directory of its own seed
        assert json.loads((seed_dir / "status.json").read_text())["status"] == "completed"
        saved = (seed_dir / "config.yaml").read_text()
        assert f"\nseed: {seed}\n" in saved and "  seeds: 1\n" in saved and f"run_dir: {seed_dir}\n" in saved
        assert (seed_dir / "report.md").is_file() and (seed_dir / "train.log").stat().st_size > 0
    per_seed = [json.loads((d / "metrics.json").read_text()) for d in seed_dirs]
    tuned = [m["tuned"]["perplexity/perplexity"] for m in per_seed]
    assert len(set(tuned)) == 3  # the seeds trained differently

    fold = json.loads((run_dir / "seeds.json").read_text())
    assert fold["seeds"] == [42, 43, 44] and fold["runs"] == ["seed-42", "seed-43", "seed-44"]
    assert [c["key"] for c in fold["columns"]] == ["base", "few_shot", "retrieval", "tuned"]
    for column in ("base", "few_shot", "retrieval", "tuned"):
        for name in ("perplexity/loss", "perplexity/perplexity"):
            values = [_columns(m)[column][name] for m in per_seed]
            spread = fold["metrics"][column][name]
            assert spread["values"] == pytest.approx(values)
            assert spread["mean"] == pytest.approx(statistics.mean(values))
            assert spread["std"] == pytest.approx(statistics.stdev(values))
            assert (spread["min"], spread["max"], spread["n"]) == (min(values), max(values), 3)
    assert fold["metrics"]["tuned"]["perplexity/perplexity"]["std"] > 0
    assert [v["outcome"] for v in fold["verdicts"]] == [m["verdict"]["outcome"] for m in per_seed]
    assert [v["seed"] for v in fold["verdicts"]] == [42, 43, 44]
    verdict = fold["verdict"]
    assert sum(verdict["counts"].values()) == 3 and verdict["metric"] == per_seed[0]["verdict"]["metric"]
    changes = [m["verdict"]["change"] for m in per_seed]
    assert verdict["change"]["mean"] == pytest.approx(statistics.mean(changes))
    assert verdict["change"]["std"] == pytest.approx(statistics.stdev(changes))
    assert f"across seeds: {verdict['text']}" in trained.stdout
    assert "3 seeds (42, 43, 44): mean, sample std and min..max across seeds" in trained.stdout
    assert f"**Across seeds:** {verdict['text']}" in (run_dir / "seeds.md").read_text()
    assert list(cwd.iterdir()) == []

    # the same command again: completed seeds are reused, a missing one is trained (the same numbers)
    stamps = {d: (d / "metrics.json").stat().st_mtime_ns for d in seed_dirs[:2]}
    shutil.rmtree(seed_dirs[2])
    again = run_cli(["train", *FAST, "evidence.seeds=3", f"run_dir={run_dir}"], cwd=cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {d: (d / "metrics.json").stat().st_mtime_ns for d in seed_dirs[:2]} == stamps
    assert json.loads((seed_dirs[2] / "metrics.json").read_text())["tuned"] == per_seed[2]["tuned"]
    refolded = json.loads((run_dir / "seeds.json").read_text())
    assert refolded["metrics"] == fold["metrics"] and refolded["verdict"] == fold["verdict"]

    # compare folds the seeds with the same function: one row per seed and their mean
    compared = run_cli(["compare", str(run_dir)], cwd=cwd)
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["run/seed-42", "run/seed-43", "run/seed-44"]
    assert lines[4].startswith("mean of 3 runs  42,43,44")
    header = lines[0].split("  ")
    spread = fold["metrics"]["tuned"]["perplexity/perplexity"]
    assert f"{spread['mean']:.4f} (sd {spread['std']:.4f})" in lines[4]
    assert "perplexity/perplexity tuned" in [h.strip() for h in header if h.strip()]
    outputs = list(cwd.glob("compare-*/comparison.md"))
    assert len(outputs) == 1  # a new folder in the working directory, nothing inside the runs
    assert f"- {fold['verdict']['text']}" in outputs[0].read_text()
    assert not list(run_dir.rglob("comparison.md"))


def test_a_completed_seed_with_other_settings_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from tuneforge.errors import TuneforgeError
    from tuneforge.training.checkpoint import CheckpointError
    from tuneforge.training.seed_runs import completed_metrics, seed_runs

    cfg = OmegaConf.create({"seed": 7, "resume": "auto", "run_dir": None, "evidence": {"seeds": 2},
                            "trainer": {"max_steps": 3}})
    runs = seed_runs(cfg, tmp_path / "run")
    assert [(r.seed, r.run_dir.name, r.config.evidence.seeds) for r in runs] == [(7, "seed-7", 1), (8, "seed-8", 1)]
    assert completed_metrics(runs[0]) is None  # nothing there yet: train it
    seed_dir = runs[0].run_dir
    seed_dir.mkdir(parents=True)
    (seed_dir / "status.json").write_text('{"status": "completed"}')
    (seed_dir / "metrics.json").write_text('{"tuned": {"m": 1.0}}')
    (seed_dir / "config.yaml").write_text(OmegaConf.to_yaml(runs[0].config))
    assert completed_metrics(runs[0]) == {"tuned": {"m": 1.0}}
    other = seed_runs(OmegaConf.merge(cfg, {"trainer": {"max_steps": 5}}), tmp_path / "run")[0]
    with pytest.raises(CheckpointError, match=r"seed-7 holds a completed run with other settings: "
                                              r"trainer.max_steps \(3 -> 5\); train the seeds again"):
        completed_metrics(other)
    assert completed_metrics(seed_runs(OmegaConf.merge(cfg, {"resume": "never"}), tmp_path / "run")[0]) is None
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "status.json").write_text('{"status": "completed"}')
    with pytest.raises(TuneforgeError, match="holds a single run"):
        seed_runs(cfg, tmp_path / "single")


# ---------------------------------------------------------------------------
# fold_seed_runs on known numbers
# ---------------------------------------------------------------------------


def _run(outcome, tuned, retrieval, low, high, higher=True):
    return {"base": {"exact_match": 0.0}, "baselines": {"retrieval": {"exact_match": retrieval}},
            "baseline_info": {"retrieval": {"label": "retrieval, k=4"}}, "tuned": {"exact_match": tuned},
            "changes": {"change": {"exact_match": {"value": tuned}},
                        "tuned-retrieval": {"exact_match": {"value": tuned - retrieval, "low": low, "high": high}}},
            "verdict": {"outcome": outcome, "metric": "exact_match", "baseline": "retrieval",
                        "baseline_label": "retrieval, k=4", "change": tuned - retrieval, "low": low, "high": high,
                        "share": True, "higher_is_better": higher, "tuned": tuned, "baseline_value": retrieval}}


def test_seeds_that_agree_give_the_smallest_margin():
    from tuneforge.evaluation.seeds import fold_seed_runs

    runs = [_run("tune", 0.967, 0.267, 0.63, 0.85), _run("tune", 0.933, 0.3, 0.65, 0.80),
            _run("tune", 1.0, 0.267, 0.70, 0.90)]
    fold = fold_seed_runs(runs, seeds=[1, 2, 3])
    assert fold["verdict"]["text"].startswith("tune in 3/3 seeds; smallest margin +63.0 points")
    assert fold["verdict"]["outcome"] == "tune" and fold["verdict"]["agree"]
    assert fold["verdict"]["smallest_margin"] == pytest.approx(0.63)
    tuned = fold["metrics"]["tuned"]["exact_match"]
    assert tuned["mean"] == pytest.approx((0.967 + 0.933 + 1.0) / 3)
    assert tuned["std"] == pytest.approx(statistics.stdev([0.967, 0.933, 1.0]))
    assert fold["changes"]["tuned-retrieval"]["exact_match"]["mean"] == pytest.approx(
        statistics.mean([0.7, 0.633, 0.733]))
    assert [c["label"] for c in fold["columns"]] == ["base (zero-shot)", "retrieval, k=4", "tuned"]


def test_seeds_that_disagree_are_inconclusive():
    from tuneforge.evaluation.seeds import fold_seed_runs, format_seed_summary

    runs = [_run("tune", 0.944, 0.722, 0.054, 0.39), _run("inconclusive", 0.889, 0.722, -0.05, 0.38),
            _run("tune", 0.944, 0.667, 0.10, 0.45)]
    fold = fold_seed_runs(runs, seeds=[42, 43, 44])
    assert fold["verdict"]["outcome"] == "inconclusive" and not fold["verdict"]["agree"]
    assert fold["verdict"]["text"].startswith("verdicts differ across seeds: tune 2/3, inconclusive 1/3 "
                                              "-> inconclusive")
    assert "smallest_margin" not in fold["verdict"]  # no margin to report when tuning did not win everywhere
    printed = format_seed_summary(fold)
    assert "seed 43: inconclusive (+16.7 points vs retrieval, k=4, 95% CI -5.0..+38.0)" in printed
    # the verdict name before the three-way verdict, and a lower-is-better metric
    old = fold_seed_runs([_run("tuning_better", 2.0, 3.0, -1.5, -0.5, higher=False),
                          _run("tuning_better", 2.2, 3.0, -1.2, -0.4, higher=False)])
    assert old["verdict"]["outcome"] == "tuning_better"
    assert old["verdict"]["smallest_margin"] == pytest.approx(-0.4)  # the upper bound nearest zero
    mixed = fold_seed_runs([_run("tune", 0.9, 0.5, 0.2, 0.6), _run("tune_with_cost", 0.9, 0.5, 0.2, 0.6)])
    assert mixed["verdict"]["outcome"] == "tune_with_cost"
    assert mixed["verdict"]["text"].startswith("verdicts differ across seeds: tune 1/2, tune with cost 1/2 -> "
                                               "tune with cost; smallest margin +20.0 points")


def test_a_sweep_gives_each_job_its_seeds_and_compare_folds_them(tmp_path):
    sweep_dir, cwd = tmp_path / "sweep", tmp_path / "cwd"
    cwd.mkdir()
    sweep = run_cli(["train", "-m", "data.max_examples=8,40", "evidence.seeds=2", "trainer.max_steps=2",
                     "trainer.enable_progress_bar=false", "threads=1", f"hydra.sweep.dir={sweep_dir}"], cwd=cwd)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert sweep.stdout.count("run directory:") == 2 and sweep.stdout.count("across seeds: ") == 2
    for job in ("0", "1"):
        assert sorted(p.name for p in (sweep_dir / job).glob("seed-*/metrics.json")) == ["metrics.json"] * 2
        assert sorted(p.parent.name for p in (sweep_dir / job).glob("seed-*/metrics.json")) == ["seed-42", "seed-43"]
    compared = run_cli(["compare", str(sweep_dir)], cwd=cwd)
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "data.max_examples", "seed"]
    assert [line.split("  ")[0].strip() for line in lines[1:7]] == [
        "0/seed-42", "0/seed-43", "mean of 2 runs", "1/seed-42", "1/seed-43", "mean of 2 runs"]
    for job, line in (("0", lines[3]), ("1", lines[6])):
        fold = json.loads((sweep_dir / job / "seeds.json").read_text())
        spread = fold["metrics"]["tuned"]["perplexity/loss"]
        assert f"{spread['mean']:.4f} (sd {spread['std']:.4f})" in line
        verdict = fold["verdict"]
        assert line.rstrip().endswith(f"{verdict['outcome'].replace('_', ' ')} 2/2") == verdict["agree"]


def test_a_seeds_ddp_child_composes_its_own_seed_and_never_a_loop_of_seeds(tmp_path):
    """A seed's other processes (strategy=ddp) start from the job's overrides with that seed's settings."""
    from tuneforge.commands.train import with_settings
    from tuneforge.training.seed_runs import SeedRun

    where = tmp_path / "it's here" / "seed-43"
    run = SeedRun(43, where, config=None)
    job = ["evidence.seeds=3", "seed=42", "strategy=ddp", f"run_dir={tmp_path}", "+evidence.x=1"]
    quoted = str(where).replace("'", "\\'")
    assert with_settings(job, run.overrides()) == ["strategy=ddp", "+evidence.x=1", "seed=43", "evidence.seeds=1",
                                                   f"run_dir='{quoted}'"]


def test_a_general_ability_cost_is_in_each_seeds_line_and_across_seeds_whatever_the_outcome():
    """docs/evaluation.md: the cost is in the seed summaries with its p-value; it was dropped (the seed verdicts
    kept neither ``forgetting`` nor ``method``), so two inconclusive seeds that each lost ~67 points of general
    ability read 'inconclusive in 2/2 seeds' and nothing more."""
    from tuneforge.evaluation.seeds import fold_seed_runs, format_seed_summary

    runs = []
    for drop, p in ((-0.667, 1.9e-06), (-0.7, 4e-07)):
        run = _run("inconclusive", 0.4, 0.55, -0.348, 0.066)
        run["verdict"].update(p_value=0.26, method="Newcombe interval, exact McNemar test", forgetting=[
            {"metric": "forgetting/contains", "change": drop, "share": True, "costs": True, "p_value": p,
             "method": "Newcombe interval, exact McNemar test"}])
        runs.append(run)
    fold = fold_seed_runs(runs, seeds=[0, 1])
    printed = format_seed_summary(fold)
    assert ("seed 0: inconclusive (-15.0 points vs retrieval, k=4, 95% CI -34.8..+6.6; McNemar p=0.26; "
            "forgetting/contains -66.7 points (McNemar p=1.9e-06))") in printed, printed
    assert fold["verdict"]["text"].startswith("inconclusive in 2/2 seeds")
    assert fold["verdict"]["text"].endswith("; tuning costs general ability in 2/2 seeds (forgetting/contains: "
                                            "mean -68.3 points)")
    from tuneforge.evaluation.seeds import seeds_verdict_cell

    assert seeds_verdict_cell(fold["verdict"]) == "inconclusive 2/2; forgetting/contains -68.3 points in 2/2"
