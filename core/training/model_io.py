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


def dtype_keyword() -> str:
    """The ``from_pretrained`` keyword for the weights' dtype in the installed transformers.

    ``dtype`` from 4.56 on (transformers 5 logs a deprecation for ``torch_dtype``);
    ``torch_dtype`` before, where ``dtype`` is not understood.
    """
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


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
        return AutoModelForCausalLM.from_pretrained(str(model_dir), **{dtype_keyword(): dtype},
                                                    trust_remote_code=trust_remote_code)
    raise ModelError(f"{model_dir}: no trained model (expected adapter_config.json of a PEFT adapter or "
                     "config.json of full weights); is the run finished?")


def load_model_from_config(plugins, model_config):
    """``(model, tokenizer)`` from a model-source config mapping that has a ``name``."""
    from omegaconf import OmegaConf

    from tuneforge.host.schema import named_config_class

    spec = plugins["model"].get(model_config["name"])
    typed = OmegaConf.merge(OmegaConf.structured(named_config_class(spec)), model_config)
    return spec.load(typed)
