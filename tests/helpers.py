"""Small helpers shared by the tests (not a pytest plugin)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "plugin_fixtures"
TUNEFORGE = [sys.executable, "-m", "tuneforge"]


def run_cli(args, *, site_dirs=(), env=None, timeout=300, cwd=None):
    """Run ``python -m tuneforge`` with fixture site directories on PYTHONPATH."""
    full_env = dict(os.environ)
    paths = [str(FIXTURES / d) for d in site_dirs]
    if full_env.get("PYTHONPATH"):
        paths.append(full_env["PYTHONPATH"])
    full_env["PYTHONPATH"] = os.pathsep.join(paths)
    full_env.update(env or {})
    return subprocess.run([*TUNEFORGE, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


def assert_read_or_refused_in_one_line(path: Path, content: bytes, tokenizer) -> None:
    """Write ``content`` to ``path``: reading it and preparing its records either works (records of dicts)
    or raises a one-line ``DataError``, never another exception."""
    from tuneforge.data import DataConfig, Record, prepare_splits, read_records
    from tuneforge.errors import DataError

    path.write_bytes(content)
    try:
        records = read_records(path)
        if records:
            prepare_splits(records, tokenizer, DataConfig(val_size=0, cache=False, max_length=32))
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(r, Record) and isinstance(r.data, dict) for r in records)


def train_losses(run_dir) -> list:
    """The per-step ``train/loss`` column of a run's metrics.csv."""
    with open(Path(run_dir) / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def adamw_component():
    """The built-in ``optimizer=adamw`` as the run gives it to ``FineTuneModule`` (spec + typed config)."""
    import tuneforge
    from tuneforge.host.components import Component
    from tuneforge.plugins.optimizers import AdamWConfig, build_adamw

    return Component(tuneforge.OptimizerSpec("adamw", AdamWConfig, build=build_adamw), AdamWConfig())


def tiny_lora_model(**tiny):
    """The tiny random Llama (``TinyModelConfig(**tiny)``) with LoRA r=4 on every linear layer, in train
    mode; ``lora_B`` drawn instead of zero, so the adapters change the output and get gradients."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model, _ = load_tiny(TinyModelConfig(**tiny))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    return model.train()


def packed_tiny_batch(model, vocab: int):
    """Two rows of 24 tokens, each three packed sequences (the block-causal mask), labels = inputs."""
    import torch

    from tuneforge.data.packing import packed_attention_inputs

    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab, (2, 24), generator=generator)
    position_ids = torch.tensor([list(range(10)) + list(range(8)) + list(range(6)),
                                 list(range(5)) + list(range(12)) + list(range(7))])
    return {"input_ids": ids, "labels": ids.clone(), **packed_attention_inputs(model, position_ids)}


def sigterm_when_called(tmp_path, module: str, function: str) -> Path:
    """A site folder (put it on PYTHONPATH) whose sitecustomize makes the tuneforge process send itself
    SIGTERM when ``module.function`` is called (the call then goes on), to stop a run in a chosen phase."""
    hook = Path(tmp_path) / "site" / "sitecustomize.py"
    hook.parent.mkdir()
    hook.write_text("import os, signal\n"
                    "def _patch():\n"
                    f"    import {module} as patched\n"
                    f"    original = patched.{function}\n"
                    "    def stop(*a, **k):\n"
                    "        os.kill(os.getpid(), signal.SIGTERM)\n"
                    "        return original(*a, **k)\n"
                    f"    patched.{function} = stop\n"
                    "_patch()\n")
    return hook.parent


def sigterm_inside_a_del_when_called(tmp_path, module: str, function: str) -> Path:
    """As :func:`sigterm_when_called`, but the signal is sent from inside an object's ``__del__``, so that its
    handler runs there too, and Python drops the exception it raises ("Exception ignored in ...")."""
    hook = Path(tmp_path) / "site" / "sitecustomize.py"
    hook.parent.mkdir()
    hook.write_text("import os, signal\n"
                    "class _Dropping:\n"
                    "    def __del__(self):\n"
                    "        os.kill(os.getpid(), signal.SIGTERM)\n"
                    "        sum(range(1000))  # the handler runs here, inside __del__\n"
                    "def _patch():\n"
                    f"    import {module} as patched\n"
                    f"    original = patched.{function}\n"
                    "    def stop(*a, **k):\n"
                    "        _Dropping()\n"
                    "        return original(*a, **k)\n"
                    f"    patched.{function} = stop\n"
                    "_patch()\n")
    return hook.parent


def sigterm_while_the_model_loads(tmp_path) -> Path:
    """:func:`sigterm_when_called` while the model loads, so the run stops at once, before training."""
    return sigterm_when_called(tmp_path, "tuneforge.training.run", "count_parameters")


def install_fake_distribution(site: Path, monkeypatch, distribution: str, code: str, entry_point: str = None):
    """A fake pip-installed distribution in ``site``: module ``<distribution>_mod`` holding ``code``, advertised
    as entry point ``entry_point`` (default: the distribution's name) in the ``tuneforge`` group."""
    module = f"{distribution}_mod"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text("import tuneforge\nfrom dataclasses import dataclass\n" + code)
    info = site / f"{distribution}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[tuneforge]\n{entry_point or distribution} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)  # and again after the test (monkeypatch undo)
