"""``init_from=<run_dir>``: a run starts from the trained adapter of an earlier run (a second stage,
e.g. ``loss=grpo`` after a short SFT run), whatever its loss.

The earlier run's ``model/`` is loaded as ``tuneforge generate`` loads it (its adapter's ``load``
over a freshly loaded base), and every trainable parameter of this run's model takes the value of
the parameter of the same name there.  The earlier run must have used the same model and adapter
settings (its ``config.yaml``); anything else is refused in one line before training.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tuneforge.errors import ConfigError

log = logging.getLogger("tuneforge")


def same_model_and_adapter(earlier_cfg, cfg, init_from) -> None:
    """A one-line :class:`ConfigError` when the earlier run's model or adapter settings differ from ``cfg``'s."""
    from tuneforge.training.checkpoint import identity_differences
    from tuneforge.training.model_io import model_config_identity

    def sections(config) -> dict:
        return {key: value for key, value in model_config_identity(config).items()
                if key.split(".", 1)[0] in ("model", "adapter")}

    differences = identity_differences(sections(earlier_cfg), sections(cfg))
    if differences:
        raise ConfigError(f"init_from={init_from}: that run trained another model or adapter "
                          f"({'; '.join(differences[:3])}); init_from needs the same model and adapter settings")


def initialise_from_run(model, run, init_from) -> int:
    """Copy the trained weights of the run at ``init_from`` into ``model``'s trainable parameters (the run's
    :class:`~tuneforge.host.components.RunConfig` is ``run``); returns how many tensors were copied."""
    import torch

    from tuneforge.commands.run_loading import read_run_config
    from tuneforge.training.model_io import load_saved_model, load_source_model

    folder = Path(init_from)
    earlier = read_run_config(folder)
    same_model_and_adapter(earlier, run.config, init_from)
    head = run.loss.spec.model_head
    base, _ = load_source_model(run.model.spec, run.model.config, head)
    trained = dict(load_saved_model(run.adapter.spec, base, folder / "model", head=head).named_parameters())
    wanted = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    missing = [name for name, _ in wanted if name not in trained]
    if missing or not wanted:
        raise ConfigError(f"init_from={init_from}: its model/ has no weight '{missing[0] if missing else '?'}' "
                          f"of this run's adapter={run.adapter.name}; init_from needs a run with the same adapter")
    with torch.no_grad():
        for name, parameter in wanted:
            source = trained[name]
            if source.shape != parameter.shape:
                raise ConfigError(f"init_from={init_from}: weight '{name}' has shape {tuple(source.shape)} there and "
                                  f"{tuple(parameter.shape)} here; init_from needs the same adapter settings")
            parameter.copy_(source.to(parameter.dtype))
    log.info("init_from: %d trained tensors from %s", len(wanted), folder / "model")
    return len(wanted)
