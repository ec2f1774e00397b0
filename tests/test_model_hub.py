"""A Hugging Face hub id of the ``hf`` model source without the hub (plugins/model_hub.py).

Not cached: one line at once, naming the cache folder, the offline variable or the unreachable hub, and what
would be valid, instead of huggingface_hub's retries (about 70 s for a run).  Cached: it loads from the cache,
with offline mode and with an unreachable hub alike.  No test needs network: the unreachable hub is a local
port that refuses connections (``HF_ENDPOINT``, which huggingface_hub reads at import).
"""

import os
import socket
import subprocess
import sys
import time

import pytest

from helpers import run_cli

HUB_ID = "nonexistent-org/x"
#: an empty proxy setting: the reachability check is skipped behind a proxy (tuneforge.data.hub_reachable)
NO_PROXY = {name: "" for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}


@pytest.fixture
def refusing_endpoint():
    """``http://127.0.0.1:<port>`` of a socket that is bound but never listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _train_hub_id(tmp_path, env):
    return run_cli(["train", "model=hf", f"model.path={HUB_ID}", "trainer.max_steps=2", "threads=1",
                    f"run_dir={tmp_path / 'run'}"], env=env, timeout=120)


def _error_line(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "Retrying" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("tuneforge: error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.fault(fault='a hub id that is not in the local cache (`model=hf model.path=org/name`) with '
                         '`HF_HUB_OFFLINE=1` or `TRANSFORMERS_OFFLINE=1`',
                   outcome="one line at once: `model.path='org/name' is not in the local Hugging Face cache <folder> "
                           "(HF_HOME=...) and offline mode is on (HF_HUB_OFFLINE=1) ...; give model.path a local folder "
                           "with config.json, a .gguf file, or download it first with network (hf download org/name)`")
@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_an_uncached_hub_id_offline_is_one_line_naming_the_cache_and_the_variable(tmp_path, variable):
    env = {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", variable: "1"}
    line = _error_line(_train_hub_id(tmp_path, env))
    assert f"model.path='{HUB_ID}' is not in the local Hugging Face cache" in line
    assert os.environ["HF_HOME"] in line  # the cache folder and HF_HOME (tests/conftest.py: a private one)
    assert f"offline mode is on ({variable}=1)" in line
    assert "a local folder with config.json, a .gguf file" in line and f"hf download {HUB_ID}" in line


@pytest.mark.fault(fault='a hub id that is not in the local cache, without offline mode, and the hub does not answer '
                         '(no network)',
                   outcome="one line within seconds (not huggingface_hub's retries, about 70 s): `... is not in the "
                           "local Hugging Face cache ... and the Hugging Face hub could not be reached (no connection "
                           "to <endpoint> within 5 s) ...` and the same alternatives")
def test_an_uncached_hub_id_with_the_hub_unreachable_fails_in_seconds(tmp_path, refusing_endpoint):
    env = {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_ENDPOINT": refusing_endpoint, **NO_PROXY}
    started = time.monotonic()
    result = _train_hub_id(tmp_path, env)
    seconds = time.monotonic() - started
    line = _error_line(result)
    assert f"the Hugging Face hub could not be reached (no connection to {refusing_endpoint}" in line
    assert "a local folder with config.json, a .gguf file" in line and f"hf download {HUB_ID}" in line
    assert seconds < 45, f"took {seconds:.0f} s (huggingface_hub's retries take about 70 s)"


def _cache_tiny_model(hf_home, repo_id: str) -> None:
    """The tiny model saved where huggingface_hub's cache keeps ``repo_id`` at ``main`` (as a download would)."""
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    commit = "0" * 40
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model, tokenizer = load_tiny(TinyModelConfig())
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)


LOAD_CACHED = ("from tuneforge.plugins.models import HFModelConfig, load_hf\n"
               "model, tokenizer = load_hf(HFModelConfig(path='tiny-org/tiny'))\n"
               "print('loaded', type(model).__name__, len(tokenizer))")


def test_a_cached_hub_id_loads_offline_and_with_the_hub_unreachable(tmp_path, refusing_endpoint):
    _cache_tiny_model(tmp_path / "hf", "tiny-org/tiny")
    base = dict(os.environ, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1", **NO_PROXY)
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": refusing_endpoint}):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", LOAD_CACHED], capture_output=True, text=True,
                                env=dict(base, **env), timeout=120)
        seconds = time.monotonic() - started
        assert "loaded LlamaForCausalLM 260" in result.stdout, result.stdout + result.stderr
        # unreachable: read with local_files_only, not retried for each optional file the cache lacks (~170 s)
        assert seconds < 45 and "Retrying" not in result.stdout + result.stderr, (env, seconds)
