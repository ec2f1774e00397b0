"""Saving a run's trained model (atomically) and loading it back for the commands that read runs."""

from __future__ import annotations

from pathlib import Path


def save_model(adapter_spec, model, tokenizer, directory: Path) -> None:
    """Save weights and tokenizer under a temporary name, then rename: never a half-written model/."""
    import shutil

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if adapter_spec.save is not None:
            adapter_spec.save(model, str(tmp))
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        from tuneforge.errors import TuneforgeError, is_disk_full

        if is_disk_full(exc):

            raise TuneforgeError(f"disk full while saving the trained model to {directory}") from exc
        raise
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def load_tuned_model(base_model, model_dir: Path, trust_remote_code: bool = False):
    """The trained model of a run: a PEFT adapter over ``base_model``, or the saved full weights
    (``base_model`` may then be ``None``)."""
    from tuneforge.errors import ModelError

    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(model_dir))
    if (model_dir / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        dtype = base_model.dtype if base_model is not None else "auto"
        return AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype,
                                                    trust_remote_code=trust_remote_code)
    raise ModelError(f"{model_dir}: no trained model (expected adapter_config.json of a PEFT adapter or "
                     "config.json of full weights); is the run finished?")


def load_model_from_config(plugins, model_config, key: str = "model"):
    """``(model, tokenizer)`` from a model-source config mapping that has a ``name``.

    The source's ``load`` gets an instance of its config class, validated like
    a run's (``key`` names the mapping in error messages).
    """
    from tuneforge.host.components import typed_config

    spec = plugins["model"].get(model_config["name"])
    return spec.load(typed_config(spec, model_config, key))
