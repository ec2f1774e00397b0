"""The entry-point module of tuneforge-tsv-bitfit (``[project.entry-points.tuneforge]`` in pyproject.toml).

tuneforge imports this module on every command and registers the ``tuneforge_*``
functions found here.  Keep it cheap: the component modules import torch and
friends inside their functions only.
"""

from tuneforge_tsv_bitfit.dataset import tuneforge_datasets
from tuneforge_tsv_bitfit.adapter import tuneforge_adapters
from tuneforge_tsv_bitfit.model import tuneforge_model_sources

__all__ = ["tuneforge_datasets", "tuneforge_adapters", "tuneforge_model_sources"]
