"""Shared test settings: one torch thread per test process (2-core CI machine)."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

# the fixture plugin packages' own test suites run in their own pytest process (test_plugin_compatibility.py)
collect_ignore_glob = ["plugin_fixtures/*"]
