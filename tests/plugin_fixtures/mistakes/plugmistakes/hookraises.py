"""Mistake: a registration hook raises."""

import tuneforge


@tuneforge.hookimpl
def tuneforge_datasets():
    raise KeyError("DATASET_HOME")
