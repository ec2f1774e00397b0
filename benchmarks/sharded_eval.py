"""Time of a 2-rank sharded evaluation vs a 1-rank one (not part of the test suite).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sharded_eval.py [hidden layers prompts]

Tiny random Llama (default hidden 512, 4 layers), 64 held-out prompts, the built-in perplexity,
choice, exact_match and rouge evaluators (tests/shard_eval_worker.py); 2 threads in all: one
process with 2 threads vs two gloo ranks with 1 thread each.  Prints both times, the ratio and
whether the metrics are equal.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_sharded_eval import run_world  # noqa: E402


def main(hidden="512", layers="4", prompts="64"):
    with tempfile.TemporaryDirectory() as tmp:
        one = run_world(Path(tmp) / "one.json", 1, hidden, layers, prompts, "2", timeout=1800)
        two = run_world(Path(tmp) / "two.json", 2, hidden, layers, prompts, "1", timeout=1800)
        one_thread = run_world(Path(tmp) / "one1.json", 1, hidden, layers, prompts, "1", timeout=1800)
    result = {"one_rank_2_threads_s": round(one["seconds"], 2), "two_ranks_1_thread_s": round(two["seconds"], 2),
              "ratio_two_over_one": round(two["seconds"] / one["seconds"], 3),
              "one_rank_1_thread_s": round(one_thread["seconds"], 2),
              "metrics_equal_1_thread_vs_2_ranks": one_thread["metrics"] == two["metrics"],
              "metrics_equal_2_threads_vs_2_ranks": one["metrics"] == two["metrics"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
