"""Tests of the ``local`` model source: what ``load`` gives, the guards, a tiny fit and the reload."""

import pytest
import torch

from tuneforge.testing import tiny_model

from tuneforge_tsv_bitfit import plugin
from tuneforge_tsv_bitfit.model import CHATML, LocalModelConfig, load_local


@pytest.fixture
def folder(tmp_path):
    """The tiny model saved as a local folder, its tokenizer without chat template (as many base models)."""
    model, tokenizer = tiny_model()
    tokenizer.chat_template = None
    model.save_pretrained(str(tmp_path / "tiny"))
    tokenizer.save_pretrained(str(tmp_path / "tiny"))
    return tmp_path / "tiny"


def test_load_gives_a_training_model_and_a_tokenizer_with_pad_token_and_chat_template(folder):
    model, tokenizer = load_local(LocalModelConfig(path=str(folder)))
    assert model.training and tokenizer.pad_token is not None and tokenizer.chat_template == CHATML
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    again, _ = load_local(LocalModelConfig(path=str(folder)))  # eval/generate/export load it again: same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_the_config_refuses_a_folder_without_a_model_and_an_unknown_dtype(tmp_path):
    with pytest.raises(ValueError, match="is not a model folder"):
        LocalModelConfig(path=str(tmp_path))
    with pytest.raises(ValueError, match="dtype must be float32, bfloat16 or float16"):
        LocalModelConfig(path="???", dtype="int8")


def test_a_tiny_fit_trains_it_and_the_run_reloads_it(tuneforge_fit, folder):
    result = tuneforge_fit(plugins=[plugin], overrides=["model=local", f"model.path={folder}",
                                                        "trainer.max_steps=2", "baselines=[]"])
    assert result.metrics["steps"] == 2 and result.config.model.name == "local"
    model, tokenizer = result.load_model()  # what tuneforge eval/generate/export do: load, then the adapter
    assert not model.training and tokenizer.chat_template
