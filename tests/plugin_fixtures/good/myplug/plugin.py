"""A third-party tuneforge plugin, as a plugin author would write it."""

from dataclasses import dataclass

import tuneforge
from tuneforge.data import DataSplits, Record, split_records, tokenize_records


@dataclass
class MyAdapterConfig:
    """some_field: multiplies the initial lm_head weights (1 = unchanged)."""

    some_field: int = 1


@dataclass
class MyDataConfig:
    """n: number of generated records."""

    n: int = 40


def apply_my_adapter(model, config):
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head = model.get_output_embeddings()
    head.weight.data.mul_(config.some_field)
    head.weight.requires_grad_(True)
    return model


def load_my_data(config, tokenizer):
    records = [Record({"instruction": f"Repeat {i}", "output": str(i) * 3}, f"generated:{i}")
               for i in range(config.n)]
    train, val = split_records(records, val_fraction=0.2, seed=0)
    train_examples, _ = tokenize_records(train, tokenizer)
    val_examples, _ = tokenize_records(val, tokenizer)
    return DataSplits(train_examples, val_examples, {"train_records": len(train)})


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("my_adapter", MyAdapterConfig, "lm_head only", apply=apply_my_adapter)]


@tuneforge.hookimpl
def tuneforge_datasets():
    return [tuneforge.DatasetSpec("my_data", MyDataConfig, "generated repeats", load=load_my_data)]
