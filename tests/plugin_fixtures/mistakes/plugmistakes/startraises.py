"""Mistake: ``tuneforge_run_start`` raises (only when TUNEFORGE_MISTAKE_START is set, so the plugin can
stay installed for the other checks)."""

import os

import tuneforge


@tuneforge.hookimpl
def tuneforge_run_start(config, run_dir):
    if os.environ.get("TUNEFORGE_MISTAKE_START"):
        raise RuntimeError("cannot reach the experiment server")
