"""tuneforge-tsv-bitfit: a tuneforge plugin (dataset, adapter).

The entry-point module is :mod:`tuneforge_tsv_bitfit.plugin`; each component lives in its own module.
"""

#: the entry-point name (``tuneforge plugins`` shows it); files this plugin writes into a
#: run go to ``<run_dir>/<PLUGIN_NAME>/``
PLUGIN_NAME = "tuneforge_tsv_bitfit"
