"""Shared test settings: one torch thread per test process (2-core CI machine), and model caches that
start empty for the default suite, as on a fresh machine.

The default suite (``-m 'not slow'``) must pass on a machine that never ran tuneforge: no
``~/.cache/tuneforge`` and no Hugging Face cache.  So that no test can come to depend on a model a
developer happens to have cached, :func:`pytest_configure` points ``TUNEFORGE_CACHE`` and the
Hugging Face caches at an empty private folder and forbids hub downloads, for this process and every
subprocess a test starts, unless the run selects ``slow`` tests (they fetch the real model with
``.ci/fetch-smollm2``).  A test that needs the demo experiment's *config* but not its weights uses
the :func:`smollm2_placeholder` fixture.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

# the fixture plugin packages' own test suites run in their own pytest process (test_plugin_compatibility.py)
collect_ignore_glob = ["plugin_fixtures/*"]

#: the file name the ``smollm2`` model preset looks for under ``$TUNEFORGE_CACHE/models``
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: environment variables that would let a default-suite test reach a developer's cached models
CACHE_VARIABLES = ("TUNEFORGE_CACHE", "TUNEFORGE_SMOLLM2_GGUF", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE",
                   "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE")


def _selects_slow_tests(config) -> bool:
    expression = (config.option.markexpr or "").replace(" ", "")
    return "slow" in expression and "notslow" not in expression


def pytest_configure(config):
    """An empty private model cache and no hub downloads for the default suite (see the module doc)."""
    global _IS_WORKER
    _IS_WORKER = hasattr(config, "workerinput")
    if _selects_slow_tests(config) or os.environ.get("TUNEFORGE_TEST_KEEP_CACHES") == "1":
        return
    private = Path(tempfile.mkdtemp(prefix="tuneforge-empty-cache-"))
    config.add_cleanup(lambda: shutil.rmtree(private, ignore_errors=True))
    for name in CACHE_VARIABLES:
        os.environ.pop(name, None)
    os.environ["TUNEFORGE_CACHE"] = str(private / "tuneforge")
    os.environ["HF_HOME"] = str(private / "huggingface")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture
def smollm2_placeholder(tmp_path, monkeypatch) -> Path:
    """An empty file where the ``smollm2`` preset looks for the model, for tests of the demo's config
    (composition, validation) that never load its weights.  Returns the file's path."""
    models = tmp_path / "tuneforge-cache" / "models"
    models.mkdir(parents=True)
    placeholder = models / SMOLLM2_GGUF
    placeholder.write_bytes(b"")
    monkeypatch.delenv("TUNEFORGE_SMOLLM2_GGUF", raising=False)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(models.parent))
    return placeholder


def pytest_sessionfinish(session, exitstatus):
    """Every ``metrics.json`` this session's tests produced (under pytest's base temporary directory)
    validates against ``docs/metrics.schema.json``; otherwise the session fails, naming each file and
    its problem."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or not Path(basetemp).is_dir():
        return
    from schema_check import produced_metrics_problems

    problems = produced_metrics_problems(Path(basetemp))
    if not problems:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["metrics.json files that do not validate against docs/metrics.schema.json:", *problems[:50]]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


#: whether this process is an xdist worker (its reports reach the controller, which writes them)
_IS_WORKER = False


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    """A failing test's traceback is written at once, to the terminal's own file descriptor, besides the
    summary at the end: a later crash of the test process (which never reaches the summary) or a CI log
    that keeps only the tail of the output still shows why it failed."""
    if not report.failed or _IS_WORKER:
        return
    text = report.longreprtext[-4000:]
    try:
        os.write(2, f"\n=== FAILED {report.nodeid} ({report.when}) ===\n{text}\n".encode(errors="replace"))
    except OSError:
        pass
