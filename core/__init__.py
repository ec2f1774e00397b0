"""tuneforge: plugin-based fine-tuning of pretrained language models.

Public API for plugin authors::

    import tuneforge

    @tuneforge.hookimpl
    def tuneforge_adapters():
        return [tuneforge.AdapterSpec("my_adapter", MyConfig, apply=apply)]

Importing this package is cheap: torch, transformers and lightning are
imported only by the modules that run training.
"""

from __future__ import annotations

import pluggy

from tuneforge.context import RunContext
from tuneforge.errors import ConfigError, DataError, ModelError, PluginError, TuneforgeError
from tuneforge.specs import (
    AdapterSpec,
    BaselineSpec,
    CallbackSpec,
    DatasetSpec,
    EvaluatorSpec,
    LossSpec,
    MetricInfo,
    ModelSourceSpec,
)

__version__ = "0.1.0"

#: decorator marking a function as a tuneforge hook implementation
hookimpl = pluggy.HookimplMarker("tuneforge")

__all__ = [
    "AdapterSpec", "BaselineSpec", "CallbackSpec", "ConfigError", "DataError", "DatasetSpec", "EvaluatorSpec",
    "LossSpec", "MetricInfo", "ModelError", "ModelSourceSpec", "PluginError", "RunContext", "TuneforgeError",
    "hookimpl",
    "__version__",
]
