"""Secrets stay out of saved files and logs; no pickle loading anywhere in tuneforge."""

import re
from pathlib import Path

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_s3cr3tT0k3nValue"


def test_tokens_never_reach_configs_logs_or_reports(tmp_path):
    # the token reaches the config through an interpolation and a secret-named key, as users write it
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.plugins.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model_dir = tmp_path / "local-model"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run_dir = tmp_path / "run"
    result = run_cli(["train", "model=hf", f"model.path={model_dir}", "model.token=${oc.env:HF_TOKEN}",
                      "trainer.max_steps=2", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"],
                     env={"HF_TOKEN": SECRET, "WANDB_API_KEY": "wandb_k3y_value"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "token: '***'" in (run_dir / "config.yaml").read_text()
    assert _files_containing(run_dir, [SECRET, "wandb_k3y_value"]) == []
    assert SECRET not in result.stdout + result.stderr


def test_secret_values_are_redacted_from_saved_config_and_log(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from tuneforge.training.run_dir import resolved_config_yaml
    from tuneforge.secrets import RedactingFilter, redact

    monkeypatch.setenv("HF_TOKEN", SECRET)
    cfg = OmegaConf.create({"model": {"path": "org/model", "token": "${oc.env:HF_TOKEN}"},
                            "note": "pushed with ${oc.env:HF_TOKEN}", "api_key": "literal-key-123"})
    text = resolved_config_yaml(cfg)
    assert SECRET not in text and "literal-key-123" not in text
    assert "token: '***'" in text and "note: pushed with ***" in text
    assert redact({"nested": [{"password": "hunter22"}]}) == {"nested": [{"password": "***"}]}
    # settings whose names merely contain "token"/"auth" stay readable (eval re-validates saved configs)
    settings = {"tokenizer": "org/tok", "tokenize": "13a", "author": "me"}
    assert redact(settings) == settings
    assert redact({"auth_token": "abc", "authorization": "Bearer x"}) == {"auth_token": "***", "authorization": "***"}

    import logging

    record = logging.LogRecord("tuneforge", logging.INFO, __file__, 1, "login with %s", (SECRET,), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "login with ***"


def test_no_unsafe_torch_load_or_pickle_in_tuneforge():
    sources = [p for folder in ("core", "plugins") for p in (ROOT / folder).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "import pickle" not in text and "pickle.load" not in text, path


def _files_containing(folder: Path, needles: list) -> list:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(n.encode() in data for n in needles):
                found.append(str(path.relative_to(folder)))
    return found
