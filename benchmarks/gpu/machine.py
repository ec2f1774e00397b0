"""The GPU check's first step: the machine it runs on and the versions that matter for its numbers."""

from __future__ import annotations

import os

import common
from outcome import require

#: packages whose versions the results record
PACKAGES = ("torch", "transformers", "peft", "lightning", "pluggy", "hydra-core", "bitsandbytes", "flash-attn",
            "deepspeed", "tuneforge")


def environment(context) -> dict:
    import torch

    versions = {**common.versions(PACKAGES), "cuda": torch.version.cuda}
    details = {"versions": versions, "cpus": os.cpu_count(), "device": context.device}
    if context.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        details.update(device_name=properties.name, memory_gib=round(properties.total_memory / 2 ** 30, 1),
                       capability=f"sm_{properties.major}{properties.minor}",
                       bf16_supported=torch.cuda.is_bf16_supported(), devices=torch.cuda.device_count())
        require(details["bf16_supported"], f"{properties.name} does not support bfloat16", details=details)
        summary = (f"{properties.name}, {details['memory_gib']} GiB, {details['capability']}, torch "
                   f"{versions['torch']} (CUDA {versions['cuda']})")
    else:
        details["device_name"] = "CPU (dry run)"
        summary = f"dry run on {os.cpu_count()} CPUs, torch {versions['torch']}"
    return {"summary": summary, "details": details}
