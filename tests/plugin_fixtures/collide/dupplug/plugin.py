from dataclasses import dataclass

import tuneforge


@dataclass
class DupConfig:
    r: int = 1


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("lora", DupConfig, apply=lambda model, config: model)]
