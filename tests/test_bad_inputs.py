"""Every bad input gets one line naming what, where and what is valid; the CLI exits non-zero without a traceback."""

import json
from dataclasses import dataclass

import pytest

import tuneforge
from helpers import run_cli
from tuneforge.errors import TuneforgeError
from tuneforge.testing import run_tiny_fit

GOOD = {"instruction": "Say hi", "output": "hi"}
BOM = b"\xef\xbb\xbf"


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _bytes(path, content: bytes):
    path.write_bytes(content)
    return str(path)


def _data(tmp_path, rows, name="data.jsonl"):
    return f"data.path={_jsonl(tmp_path / name, rows)}"


@dataclass
class NoTemplateConfig:
    """seed: the tiny model's seed."""

    seed: int = 0


class NoTemplateSource:
    """A model source whose tokenizer has no chat template (like many base models)."""

    __name__ = "no_template_source"

    @tuneforge.hookimpl
    def tuneforge_model_sources(self):
        from tuneforge.plugins.models import TinyModelConfig, load_tiny

        def load(config):
            model, tokenizer = load_tiny(TinyModelConfig(seed=config.seed))
            tokenizer.chat_template = None
            return model, tokenizer

        return [tuneforge.ModelSourceSpec("tiny_no_template", NoTemplateConfig, load=load)]


CASES = {
    "malformed JSON line": (
        lambda t: [_data(t, [GOOD, GOOD, "{not json", GOOD] * 3)],
        r"data\.jsonl:3: invalid JSON"),
    "record missing fields": (
        lambda t: [_data(t, [GOOD] * 8 + [{"instruction": "no answer", "input": "x"}])],
        r"data\.jsonl:9: .*(missing|cannot tell).*output"),
    "wrong value type": (
        lambda t: [_data(t, [GOOD] * 8 + [{"instruction": "Add", "output": 3}])],
        r"data\.jsonl:9: .*output.* must be a string, got int"),
    "empty dataset": (
        lambda t: [_data(t, [])],
        r"data\.jsonl: no records found"),
    "empty after filtering": (
        lambda t: [_data(t, [{"instruction": f"w{i}", "output": "x" * 400} for i in range(10)]),
                   "data.max_length=64", "data.truncation=drop"],
        r"no training example left: all \d+ were dropped"),
    # prompts that fill max_length leave no trained label: each is dropped and counted, none left -> error
    "labels all masked": (
        lambda t: [_data(t, [{"instruction": "explain " * 20 + str(i), "output": "x"} for i in range(10)]),
                   "data.max_length=24", "data.truncation=truncate"],
        r"no training example left"),
    "nonexistent data path": (
        lambda t: [f"data.path={t / 'missing.jsonl'}"],
        r"missing\.jsonl"),
    "byte-order mark only (jsonl)": (
        lambda t: ["data.path=" + _bytes(t / "bom.jsonl", BOM)],
        r"bom\.jsonl: no records found"),
    "byte-order mark only (json)": (
        lambda t: ["data=json", "data.path=" + _bytes(t / "bom.json", BOM + b"\n")],
        r"bom\.json: no records found"),
    "byte-order mark only (csv)": (
        lambda t: ["data=csv", "data.path=" + _bytes(t / "bom.csv", BOM)],
        r"bom\.csv: no records found"),
    "model path is a file that is not a model": (
        lambda t: ["model=hf", "model.path=" + _bytes(t / "weights.bin", b"not a model")],
        r"model\.path: .*weights\.bin is a file, not a model: give a folder with config\.json"),
    "nonexistent model path": (
        lambda t: ["model=hf", f"model.path={t / 'no-model'}"],
        r"model\.path: no such model folder: .*no-model"),
    "unknown component": (
        lambda t: ["loss=cross_entropi"],
        r"unknown choice 'cross_entropi' for 'loss' \(did you mean 'cross_entropy'\?\)"),
    "unknown config key": (
        lambda t: ["optim.learning_rate=1e-3"],
        r"unknown config key 'optim.learning_rate'.*valid keys of optim: .*lr"),
    "wrong type in override": (
        lambda t: ["loader.batch_size=eight"],
        r"bad value for 'loader.batch_size': Value 'eight'"),
    "chat data without template": (
        lambda t: ["model=tiny_no_template"],
        r"no chat template.*data\.chat_template"),
    "adapter does not fit": (
        lambda t: ["adapter.target_modules=[attn_proj]"],
        r"adapter\.target_modules: \['attn_proj'\] match no module of the model; valid: .*q_proj"),
    "bad scheduler": (
        lambda t: ["optim.scheduler=cosin"],
        r"optim\.scheduler: must be one of constant, linear, cosine, cosine_with_restarts, polynomial, inverse_sqrt, "
        r"warmup_stable_decay, got 'cosin' \(did you mean 'cosine'\?\)"),
}


@pytest.mark.fault(fault="bad input (each case of the table): malformed JSON, a file holding only a byte-order "
                         "mark, a `model.path` that is a file but not a model (garbage `.bin`), unknown keys ...",
                   outcome="one line `tuneforge: error: ...` naming what, where (`file:line` or the key) and what is "
                           "valid (`...: no records found`; `model.path: ... is a file, not a model: give a folder "
                           "with config.json ...`)")
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_one_line_naming_it(case, tmp_path):
    make_overrides, pattern = CASES[case]
    with pytest.raises(TuneforgeError, match=pattern) as info:
        run_tiny_fit(tmp_path / "run", plugins=[NoTemplateSource()], overrides=make_overrides(tmp_path))
    assert "\n" not in str(info.value)


def test_pickle_weights_and_remote_code_are_refused(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.plugins.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    pickled = tmp_path / "pickled"
    # written by hand: transformers 5's save_pretrained writes safetensors only (no safe_serialization=False)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    tokenizer.save_pretrained(pickled)
    with pytest.raises(TuneforgeError, match="refused unless model.allow_pickle=true"):
        run_tiny_fit(tmp_path / "r1", overrides=["model=hf", f"model.path={pickled}"])

    remote = tmp_path / "remote"
    remote.mkdir()
    tokenizer.save_pretrained(remote)
    (remote / "config.json").write_text(json.dumps({
        "model_type": "my_custom_lm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                                                   "AutoModelForCausalLM": "modeling_custom.CustomModel"}}))
    (remote / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(TuneforgeError, match="trust_remote_code"):
        run_tiny_fit(tmp_path / "r2", overrides=["model=hf", f"model.path={remote}"])


def test_cli_prints_one_line_and_exits_2_without_traceback(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [GOOD] * 5 + ["{oops"])
    result = run_cli(["train", f"data.path={bad}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert len(lines) == 1 and f"{bad}:6: invalid JSON" in lines[0]
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"
    debug = run_cli(["--debug", "train", f"data.path={bad}", f"hydra.run.dir={tmp_path / 'run2'}"])
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.fault(fault="a YAML syntax error in an experiment file",
                   outcome="one line `<file>:<line>:<column>: invalid YAML: ...`, exit 2, no run directory")
def test_a_yaml_syntax_error_in_an_experiment_file_is_one_line_with_file_line_and_column(tmp_path):
    experiment = tmp_path / "conf" / "experiment" / "broken.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("trainer:\n  max_steps: 3\n  devices: [1, 2\nadapter:\n  r: 4\n")
    result = run_cli(["train", "--config-dir", str(tmp_path / "conf"), "+experiment=broken",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tuneforge: error: {experiment}:4:8: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow "
        "sequence at line 3, column 12)"]
    assert not (tmp_path / "run").exists()
    from tuneforge.errors import ConfigError
    from tuneforge.host.compose import yaml_syntax_error

    import yaml

    with pytest.raises(yaml.YAMLError) as raised:
        yaml.safe_load(experiment.read_text())
    assert yaml_syntax_error(ConfigError("wrapped").with_traceback(None)) is None
    assert yaml_syntax_error(raised.value).endswith("4:8: invalid YAML: expected ',' or ']', but got ':' (while "
                                                    "parsing a flow sequence at line 3, column 12)")
