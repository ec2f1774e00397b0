"""Hydra configuration files shipped with tuneforge (``pkg://tuneforge.conf``)."""
