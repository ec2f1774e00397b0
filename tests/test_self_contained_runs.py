"""A run directory stands on its own: absolute paths, `~` expanded for every writer, data content recorded;
resuming or re-scoring on changed data is refused in one line naming the file and both hashes."""

import json
import shutil
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import run_cli
from tuneforge.errors import TuneforgeError
from tuneforge.plugins.datasets import sample_path
from tuneforge.testing import run_tiny_fit
from tuneforge.training.data_files import file_sha256

SHORT = ["trainer.max_steps=2", "evaluators=[perplexity]", "baselines=[]", "memorisation.sample=0",
         "uncertainty.resamples=0"]


def _copy_sample(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(sample_path("sample.jsonl"), folder / "data.jsonl"))


def _edit(path: Path) -> None:
    """Change one record's answer (same path, other content)."""
    lines = path.read_text().splitlines()
    row = json.loads(lines[0])
    key = "output" if "output" in row else next(iter(row))
    row[key] = json.dumps(row[key]) + " (edited)" if not isinstance(row[key], str) else row[key] + " (edited)"
    path.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")


@pytest.mark.fault(fault="`tuneforge eval`, from another working directory, of a run trained on a relative "
                         "`data.path` that then changed",
                   outcome="works from any directory (`config.yaml` holds absolute paths); once the file changed, the"
                           " same one line as a resume (`allow_changed_data=true` evaluates anyway)")
def test_relative_paths_are_recorded_absolute_and_eval_works_from_another_directory(tmp_path, monkeypatch):
    from tuneforge.commands.eval import eval_command

    data = _copy_sample(tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    result = run_tiny_fit(Path("runs/first"), overrides=[*SHORT, "data.path=data.jsonl"])
    run_dir = (tmp_path / "project" / "runs" / "first").resolve()
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.data.path == str(data) and saved.run_dir == str(run_dir)
    digest = file_sha256(data)
    assert json.loads((run_dir / "data_files.json").read_text())["files"] == {str(data): digest}
    assert result.metrics["data_files"] == {str(data): digest}
    assert json.loads((run_dir / "metrics.json").read_text())["data_files"] == {str(data): digest}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    eval_command([f"run_dir={run_dir}", "evaluators=[perplexity]", "uncertainty.resamples=0"])
    scored = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert scored["tuned"]["perplexity/loss"] == pytest.approx(result.metrics["tuned"]["perplexity/loss"], rel=1e-4)

    _edit(data)
    with pytest.raises(TuneforgeError) as info:
        eval_command([f"run_dir={run_dir}", "evaluators=[perplexity]", "uncertainty.resamples=0"])
    message = str(info.value)
    assert "\n" not in message and f"{data} changed (sha256 {digest[:12]}" in message
    assert f"{file_sha256(data)[:12]}... now)" in message and "allow_changed_data=true" in message
    eval_command([f"run_dir={run_dir}", "evaluators=[perplexity]", "uncertainty.resamples=0",
                  "allow_changed_data=true"])


@pytest.mark.fault(fault="`resume=auto` after the data file was edited in place",
                   outcome="one line naming the file and both sha256 prefixes, with `resume=never` / "
                           "`allow_changed_data=true` as the ways out")
def test_resume_auto_onto_edited_data_is_refused_in_one_line(tmp_path):
    data = _copy_sample(tmp_path)
    run_dir = tmp_path / "run"
    args = ["train", f"data.path={data}", "trainer.max_steps=4", "checkpoint.every_n_steps=1", *SHORT[1:],
            "trainer.enable_progress_bar=false", "threads=1", "callbacks=[batch_log]",
            f"callbacks.batch_log.path={tmp_path / 'batches.log'}", f"hydra.run.dir={run_dir}"]
    killed = run_cli([*args, "callbacks.batch_log.kill_at_step=2"], site_dirs=["steplog"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = file_sha256(data)
    _edit(data)
    refused = run_cli(args, site_dirs=["steplog"])
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert len(errors) == 1, refused.stderr[-2000:]
    assert f"the data changed since checkpoint {run_dir / 'checkpoints' / 'step-00000002'}" in errors[0]
    assert f"{data} changed (sha256 {before[:12]}... then, {file_sha256(data)[:12]}... now)" in errors[0]
    assert "resume=never" in errors[0] and "allow_changed_data=true" in errors[0]

    allowed = run_cli([*args, "allow_changed_data=true"], site_dirs=["steplog"])
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "resuming on changed data (allow_changed_data=true)" in allowed.stdout + allowed.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "data_files.json").read_text())["files"] == {str(data): file_sha256(data)}


@pytest.mark.fault(fault="`run_dir=\"~/x\"` (quoted)",
                   outcome="everything (job log, `metrics.csv`, checkpoints, `model/`, report) in `$HOME/x`; no `./~`"
                           " folder")
def test_tilde_run_dir_is_the_home_folder_for_every_writer(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    result = run_cli(["train", 'run_dir="~/x"', *SHORT, "trainer.enable_progress_bar=false", "threads=1"],
                     env={"HOME": str(home)}, cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = home / "x"
    for name in ("config.yaml", "metrics.csv", "metrics.json", "status.json", "report.md", "model", "train.log"):
        assert (run_dir / name).exists(), name
    assert list(work.iterdir()) == []  # no literal ./~ folder
    assert OmegaConf.load(run_dir / "config.yaml").run_dir == str(run_dir)


@pytest.mark.fault(fault="a document of the RAG corpus (`baselines.rag.corpus`) edited after the run",
                   outcome="`tuneforge eval` (and `resume=auto`) refuse in one line naming the document and both "
                           "sha256 prefixes")
def test_a_rag_corpus_is_part_of_the_runs_data_identity(tmp_path, monkeypatch):
    """baselines.rag.corpus (a folder here, given relative) is hashed file by file like data.path, and
    recorded absolute: eval (as a resume) after a document changed is refused as after a data edit."""
    data = _copy_sample(tmp_path / "project")
    corpus = tmp_path / "project" / "docs"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Vaults\n\nThe vault code of Alba is 1234.\n")
    (corpus / "b.txt").write_text("The vault code of Brno is 5678.\n")
    monkeypatch.chdir(tmp_path / "project")
    run_tiny_fit(Path("run"), overrides=[*[arg for arg in SHORT if not arg.startswith("baselines=")],
                                         "data.path=data.jsonl", "baselines=[rag]", "baselines.rag.corpus=docs"])
    run_dir = tmp_path / "project" / "run"
    assert OmegaConf.load(run_dir / "config.yaml").baselines.rag.corpus == str(corpus)
    expected = {str(data): file_sha256(data), str(corpus / "a.md"): file_sha256(corpus / "a.md"),
                str(corpus / "b.txt"): file_sha256(corpus / "b.txt")}
    assert json.loads((run_dir / "data_files.json").read_text())["files"] == expected
    from tuneforge.commands.eval import eval_command

    edited = corpus / "b.txt"
    edited.write_text("The vault code of Brno is 9999.\n")
    with pytest.raises(TuneforgeError, match=rf"{edited} changed \(sha256 {expected[str(edited)][:12]}\.\.\. then"):
        eval_command([f"run_dir={run_dir}", "evaluators=[perplexity]", "uncertainty.resamples=0"])


@pytest.mark.parametrize("form", ["string", "list", "mapping"])
def test_local_data_files_of_a_builder_dataset_are_hashed(tmp_path, monkeypatch, form):
    """data=hf with a builder name (``json``) reads its records from ``data.data_files``: a file, a list, or a
    mapping split -> file(s); each local file is made absolute and hashed into the run's identity."""
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.training.data_files import data_file_hashes

    train, val = _copy_sample(tmp_path / "a"), _copy_sample(tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    given = {"string": "a/data.jsonl", "list": "[a/data.jsonl,b/data.jsonl]",
             "mapping": "{train:a/data.jsonl,validation:[b/data.jsonl]}"}[form]
    plugins = load_plugins()
    components = run_components(compose(["data=hf", "data.path=json", f"data.data_files={given}"], plugins), plugins)
    expected = {str(train): file_sha256(train)} | ({} if form == "string" else {str(val): file_sha256(val)})
    assert data_file_hashes(components) == expected
    files = components.data.config.data_files
    assert files == {"string": str(train), "list": [str(train), str(val)],
                     "mapping": {"train": str(train), "validation": [str(val)]}}[form]
