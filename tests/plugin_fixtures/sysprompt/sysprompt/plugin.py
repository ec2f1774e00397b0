"""A third-party prompting baseline, as a plugin author would write it: a system prompt from a file."""

from dataclasses import dataclass
from pathlib import Path

import tuneforge
from tuneforge.validation import check, existing_path


@dataclass
class SystemPromptConfig:
    """path: a text file whose content becomes the system message of every held-out prompt."""

    path: str = "???"

    def __post_init__(self):
        check(self, path=existing_path("file"))


def rewrite(model, tokenizer, train, held_out, config):
    text = Path(config.path).read_text(encoding="utf-8").strip()
    rewritten = []
    for example in held_out:
        own = [m for m in example["messages"] if m["role"] != "system"]
        rewritten.append(dict(example, messages=[{"role": "system", "content": text}, *own]))
    return rewritten


@tuneforge.hookimpl
def tuneforge_baselines():
    return [tuneforge.BaselineSpec("system_prompt", SystemPromptConfig, "a system prompt read from a file",
                                   rewrite=rewrite, describe=lambda config: f"system prompt ({Path(config.path).name})")]
