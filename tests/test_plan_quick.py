"""`tuneforge plan` without torch: the counts from a config's fields (core/planning/decoder_shapes.py and
the adapters' ``count_parameters``) equal the meta-device model's with peft really applied, for every
decoder family sized that way and the adapter settings the counts model; the others fall back to the
meta-device model; and the plan command imports no torch on a machine without a GPU driver.
"""

import json
import subprocess
import sys

import pytest

from tuneforge.host.components import run_components
from tuneforge.host.compose import compose, load_plugins
from tuneforge.planning import model_facts as facts_module
from tuneforge.planning.decoder_shapes import DECODER_FAMILIES, decoder_shapes

from test_plan import LLAMA_8B, ROOT, SAMPLE

PREFERENCE = ROOT / "plugins" / "data" / "preference.jsonl"

#: small configs of each family; the fields a family's config class defaults are left out on purpose
#: in some of them (mistral's key/value heads, qwen3's head size), so the defaults are checked too
FAMILIES = {
    "llama_tied": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
                   "tie_word_embeddings": True},
    "llama_biases": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                     "num_attention_heads": 8, "head_dim": 16, "vocab_size": 280, "attention_bias": True,
                     "mlp_bias": True, "torch_dtype": "bfloat16"},
    "mistral": {"model_type": "mistral", "hidden_size": 128, "intermediate_size": 160, "num_hidden_layers": 2,
                "num_attention_heads": 16, "vocab_size": 256},
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 32, "vocab_size": 300},
}
ADAPTERS = {
    "lora": ["adapter=lora"],
    "lora_listed_layers": ["adapter=lora", "adapter.target_modules=[q_proj,v_proj,lm_head]",
                           "adapter.layers_to_transform=[1]"],
    "lora_pattern": ["adapter=lora", r"adapter.target_modules=.*\.mlp\..*_proj"],
    "dora_biases": ["adapter=lora", "adapter.use_dora=true", "adapter.bias=all", "adapter.r=3"],
    "lora_only_biases": ["adapter=lora", "adapter.bias=lora_only", "adapter.target_modules=[k_proj,o_proj]"],
    "qlora_checkpointed": ["adapter=qlora", "adapter.gradient_checkpointing=true"],
    "full": ["adapter=full"],
    "freeze": ["adapter=freeze", "adapter.trainable_layers=1"],
}


def _run(tmp_path, fields, *overrides):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    data = [] if any(o.startswith("data.path=") for o in overrides) else [f"data.path={SAMPLE}"]
    arguments = ["model=hf", f"model.path={folder}", "model.dtype=auto", *data, "baselines=[]", *overrides]
    plugins = load_plugins(arguments)  # first: the plugins' config groups
    return run_components(compose(arguments), plugins)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_counts_from_config_fields_equal_the_meta_device_model_with_peft_applied(tmp_path, family, adapter):
    if adapter == "qlora_checkpointed":
        pytest.importorskip("bitsandbytes")
    run = _run(tmp_path, FAMILIES[family], *ADAPTERS[adapter])
    quick = facts_module._facts_from_fields(run)
    assert quick is not None
    exact = facts_module._facts_of(run, facts_module.read_architecture(run.model))
    assert exact.exact
    assert quick == exact


@pytest.mark.parametrize("overrides", [
    ["adapter=lora", "adapter.modules_to_save=[lm_head]"],  # peft copies the module: the meta model counts it
    ["adapter=freeze", "adapter.trainable_modules=[model.norm]"],
    ["adapter=prefix"],  # no count of its own
    ["adapter=lora", "adapter.layers_to_transform=[0]"],  # peft refuses it with all-linear: the meta note says so
    ["adapter=lora", "loss=reward", f"data.path={PREFERENCE}", "evaluators=[reward_accuracy]"],  # a classifier
])
def test_what_the_counts_do_not_model_falls_back_to_the_meta_device_model(tmp_path, overrides):
    run = _run(tmp_path, FAMILIES["llama_tied"], *overrides)
    assert facts_module._facts_from_fields(run) is None
    assert facts_module.model_facts(run).total_parameters > 0


def test_unknown_families_and_incomplete_configs_are_not_guessed():
    fields = dict(FAMILIES["llama_tied"])
    assert decoder_shapes(fields) is not None
    assert decoder_shapes({**fields, "model_type": "gpt2"}) is None
    assert decoder_shapes({**fields, "auto_map": {"AutoModelForCausalLM": "x.Y"}}) is None
    assert decoder_shapes({**fields, "num_local_experts": 0, "quantization_config": {"quant_method": "fp8"}}) is None
    assert decoder_shapes({key: value for key, value in fields.items() if key != "intermediate_size"}) is None
    assert set(DECODER_FAMILIES) == {"llama", "mistral", "qwen2", "qwen3"}


def test_a_damaged_gguf_file_is_one_line_naming_it_not_a_traceback(tmp_path):
    from tuneforge.errors import ModelError
    from tuneforge.plugins.models import HFModelConfig, hf_config_fields, hf_model_config

    damaged = tmp_path / "cut.gguf"
    damaged.write_bytes(b"GGUF\x03\x00\x00\x00\x05\x00")  # the header stops inside the tensor count
    config = HFModelConfig(path=str(damaged))
    assert hf_config_fields(config) is None  # the quick way steps aside; the config reader says what is wrong
    with pytest.raises(ModelError, match=r"cannot read the config of model.path='.*cut.gguf': .*cut.gguf is not a "
                                         r"readable GGUF file: its header is damaged or cut short"):
        hf_model_config(config)


def test_the_gguf_keys_of_the_sized_decoders_are_transformers_own():
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from tuneforge.plugins.gguf_header import DECODER_GGUF_KEYS

    for architecture, keys in DECODER_GGUF_KEYS.items():
        assert keys == {key: field for key, field in GGUF_CONFIG_MAPPING[architecture].items()
                        if field not in (None, -1)}, architecture


def test_the_plan_command_imports_no_torch_and_reads_no_weights(tmp_path):
    """A config-only Llama-3-8B folder planned for a 24 GiB GPU: no torch, transformers' models or peft."""
    script = (
        "import sys\n"
        "from tuneforge.commands.cli import main\n"
        "try:\n"
        f"    main(['plan', 'model=hf', 'model.path={LLAMA_8B}', 'model.dtype=bfloat16', 'data.path={SAMPLE}',\n"
        "          'adapter=qlora', 'trainer.accelerator=gpu', '--memory', '24GiB'])\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "print('imported:', sorted(m for m in ('torch', 'peft', 'transformers.modeling_utils') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model: LlamaForCausalLM, 8.05B parameters" in done.stdout, done.stdout
    assert "imported: []" in done.stdout, done.stdout
