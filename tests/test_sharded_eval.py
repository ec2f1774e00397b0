"""Sharded evaluation: 2 gloo ranks give exactly the single-process numbers and predictions."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = str(Path(__file__).with_name("shard_eval_worker.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(out: Path, world: int, *extra: str, timeout: float = 120) -> dict:
    port, env = _free_port(), dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(name, None)
    procs = [subprocess.Popen([sys.executable, WORKER, str(out), str(rank), str(world), str(port), *extra],
                              env=env, stderr=subprocess.PIPE, text=True) for rank in range(world)]
    try:
        errors = [proc.communicate(timeout=timeout)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-3000:]
    return json.loads(out.read_text())


def test_two_ranks_equal_one_rank_exactly(tmp_path):
    one = run_world(tmp_path / "one.json", 1)
    two = run_world(tmp_path / "two.json", 2)
    assert set(one["metrics"]) == {"perplexity/loss", "perplexity/perplexity", "choice/accuracy", "exact_match",
                                  "rouge/rougeL"}
    assert (one["world"], two["world"]) == (1, 2)
    assert two["metrics"] == one["metrics"]  # exactly: same batches, aggregated in the original order
    assert two["predictions"] == one["predictions"]
    assert len([r for r in one["predictions"] if r["kind"] == "generation"]) == 12
    assert any(r["base"] for r in one["predictions"])  # the model generated something to compare


def test_map_batches_without_a_process_group_computes_every_batch():
    from tuneforge.evaluation import EvaluationPass, map_batches

    assert map_batches(sum, list(range(7)), 3, EvaluationPass()) == [3, 12, 6]
