"""tuneforge: plugin-based fine-tuning of pretrained language models.

Public API for plugin authors::

    import tuneforge

    @tuneforge.hookimpl
    def tuneforge_adapters():
        return [tuneforge.AdapterSpec("my_adapter", MyConfig, apply=apply)]

Config dataclasses may check their values in ``__post_init__`` with the rules
of :mod:`tuneforge.validation` (raising :class:`ConfigValueError`).

Importing this package is cheap: torch, transformers and lightning are
imported only by the modules that run training.
"""

from __future__ import annotations

import pluggy

from tuneforge import validation
from tuneforge.context import RunContext
from tuneforge.errors import ConfigError, DataError, ModelError, PluginError, TuneforgeError
from tuneforge.specs import (
    AdapterSpec,
    BaselineSpec,
    CallbackSpec,
    DatasetSpec,
    EvaluatorSpec,
    LoggerContext,
    LoggerSpec,
    LossSpec,
    MetricInfo,
    ModelSourceSpec,
    OptimizerSpec,
    RetrieverSpec,
    RewardConfig,
    RewardSpec,
)
from tuneforge.validation import ConfigValueError

__version__ = "0.2.0"

#: decorator marking a function as a tuneforge hook implementation
hookimpl = pluggy.HookimplMarker("tuneforge")

__all__ = [
    "AdapterCount", "AdapterSpec", "BaselineSpec", "CallbackSpec", "ConfigError", "ConfigValueError", "DataError", "DatasetSpec",
    "DecoderShapes", "EvaluatorSpec", "LinearShape", "LoggerContext", "LoggerSpec", "LossSpec", "MetricInfo", "ModelError", "ModelSourceSpec",
    "OptimizerSpec", "PluginError", "RetrieverSpec", "RewardConfig", "RewardSpec", "RunConfig", "RunContext", "RunSettings", "TuneforgeError", "hookimpl",
    "validation", "__version__",
]

#: public names defined in modules that ``import tuneforge`` does not load until they are used
_LAZY = {"RunConfig": "tuneforge.host.components", "RunSettings": "tuneforge.host.components",
         "Component": "tuneforge.host.components", "AdapterCount": "tuneforge.planning.decoder_shapes",
         "DecoderShapes": "tuneforge.planning.decoder_shapes", "LinearShape": "tuneforge.planning.decoder_shapes"}


def __getattr__(name: str):
    """``tuneforge.RunConfig`` (the validated run the lifecycle hooks receive), ``RunSettings``, and the
    shapes an adapter's ``count_parameters`` counts on (``DecoderShapes``, ``LinearShape``, ``AdapterCount``),
    imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuneforge' has no attribute '{name}'")
