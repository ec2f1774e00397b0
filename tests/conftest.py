"""Shared test settings: one torch thread per test process (2-core CI machine)."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
