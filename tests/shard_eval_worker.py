"""One rank of a sharded evaluation (used by tests/test_sharded_eval.py and benchmarks/sharded_eval.py).

    python tests/shard_eval_worker.py OUT.json RANK WORLD PORT [hidden layers prompts threads]

Builds the tiny random Llama (same seed on every rank), 1 process group of WORLD gloo processes
(none for WORLD=1), runs the built-in evaluators through the host's runner and writes the metrics,
the predictions and the evaluation time (rank 0 only).
"""

import json
import os
import sys
import time


def main(out, rank, world, port, hidden=64, layers=2, prompts=12, threads=1):
    import torch

    torch.set_num_threads(int(threads))
    from types import SimpleNamespace

    import torch.distributed as dist
    from omegaconf import OmegaConf

    from tuneforge.data import Record, tokenize_records
    from tuneforge.specs import EvaluatorSpec
    from tuneforge.evaluation import merge_predictions
    from tuneforge.evaluation.runner import run_evaluators
    from tuneforge.plugins.evaluators import ChoiceConfig, PerplexityConfig, evaluate_choice, evaluate_perplexity
    from tuneforge.plugins.evaluators_generation import (NormalizedEvalConfig, RougeEvalConfig, evaluate_exact_match,
                                                         evaluate_rouge)
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model, tokenizer = load_tiny(TinyModelConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                                                 num_hidden_layers=layers))
    words = ["forest", "falcon", "river", "stone", "cloud", "garden", "meadow", "candle", "harbor", "lantern"]
    rows = [{"instruction": f"Write '{words[i % len(words)]}' {i} times, then the letter count.",
             "output": words[i % len(words)].upper(), "choices": ["yes", "no", words[i % len(words)]],
             "answer": i % 3} for i in range(int(prompts))]
    examples = tokenize_records([Record(row, f"shard:{i}") for i, row in enumerate(rows)], tokenizer)[0]

    def component(fn, config):
        name = fn.__name__.removeprefix("evaluate_")
        spec = EvaluatorSpec(name, type(config), f"{name} (shard test)", evaluate=fn)
        return SimpleNamespace(spec=spec, config=config)

    evaluators = {"perplexity": component(evaluate_perplexity, PerplexityConfig(batch_size=3)),
                  "choice": component(evaluate_choice, ChoiceConfig(batch_size=4)),
                  "exact_match": component(evaluate_exact_match, NormalizedEvalConfig(max_new_tokens=8, batch_size=4)),
                  "rouge": component(evaluate_rouge, RougeEvalConfig(max_new_tokens=8, batch_size=4))}
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1}})
    started = time.perf_counter()
    metrics, one_pass = run_evaluators(evaluators, cfg, model, tokenizer, examples, "base")
    seconds = time.perf_counter() - started
    if rank == 0:
        with open(out, "w") as f:
            from tuneforge.evaluation import distributed_world

            json.dump({"world": distributed_world()[1], "metrics": metrics, "predictions": merge_predictions({"base": one_pass}),
                       "seconds": seconds}, f)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    out, rank, world, port, *rest = sys.argv[1:]
    main(out, int(rank), int(world), int(port), *map(int, rest))
