"""Model source ``local``: a causal LM and its tokenizer from a local Hugging Face folder.

tuneforge calls ``load`` once per process of a training run (every DDP process
loads its own copy) and again in ``tuneforge eval``, ``generate``, ``chat`` and
``export``, to rebuild the base model that the run's adapter weights go on: it
must give the same model every time and have no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tuneforge

#: ChatML, used when the folder's tokenizer has no chat template of its own
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")


@dataclass
class LocalModelConfig:
    """A model saved with ``save_pretrained`` in a local folder.

    path: the folder holding ``config.json``, the weights and the tokenizer files.
    chat_template: the Jinja chat template given to a tokenizer that has none (default ChatML);
        a tokenizer's own template is kept.
    dtype: the weights' dtype: float32, bfloat16 or float16.
    """

    path: str = "???"
    chat_template: str = CHATML
    dtype: str = "float32"

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if self.dtype not in ("float32", "bfloat16", "float16") and not str(self.dtype).startswith(("???", "${")):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        path = str(self.path)
        if path and not path.startswith(("???", "${")) and not (Path(path).expanduser() / "config.json").is_file():
            raise ValueError(f"path {path!r} is not a model folder (no config.json in it)")


def load_local(config: LocalModelConfig):
    """``(model, tokenizer)``: the model in train mode, the tokenizer with a pad token and a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(Path(config.path).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = config.chat_template
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=getattr(torch, config.dtype))
    model.train()
    return model, tokenizer


@tuneforge.hookimpl
def tuneforge_model_sources():
    return [tuneforge.ModelSourceSpec("local", LocalModelConfig, "a causal LM from a local folder",
                                      load=load_local)]
