"""Throughput of ``tuneforge serve``: requests/s and generated tokens/s at 1, 4 and 16 concurrent clients.

    python benchmarks/serve_throughput.py [--run-dir RUN] [--clients 1,4,16] [--requests 4] [--max-tokens 32]
                                          [--threads N] [--out results.json]

Without ``--run-dir`` it first trains the tiny random model for 3 steps (``model=tiny``) into a
temporary folder and serves that; give a SmolLM2 run (``bash .ci/demo``'s) for real numbers.
The server runs in its own process on a free port of 127.0.0.1 with ``max_batch_size`` equal to
the largest client count.  Each client sends ``--requests`` chat requests one after the other
(greedy, ``max_tokens`` each, distinct prompts), with the standard library's HTTP client so the
benchmark needs nothing beyond tuneforge[serve].  Tokens are the completion tokens the server
reports in ``usage`` (a reply that ends at EOS counts fewer).  One warm-up request runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def tiny_run(folder: Path) -> Path:
    from tuneforge.testing import run_tiny_fit

    return run_tiny_fit(folder / "tiny-run", overrides=["trainer.max_steps=3", "optim.lr=0.003"]).run_dir


def start_server(run_dir, port: int, max_batch_size: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", f"run_dir={run_dir}", f"port={port}",
                                f"max_batch_size={max_batch_size}", "max_queue=256", f"threads={threads}",
                                "log_level=warning"], env=env)
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"tuneforge serve exited with {process.returncode}")
        try:
            get(f"http://127.0.0.1:{port}/health")
            return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("tuneforge serve did not start within 300 s")


def measure(base: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``requests`` chat requests in a row; totals over the wall time."""
    tokens, latencies, lock = [], [], threading.Lock()

    def client(index: int) -> None:
        for r in range(requests):
            body = {"model": model, "temperature": 0, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"Question {index}-{r}: name a colour and say why."}]}
            started = time.perf_counter()
            reply = post(f"{base}/v1/chat/completions", body)
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens.append(reply["usage"]["completion_tokens"])

    before = get(f"{base}/health")
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    after = get(f"{base}/health")
    return {"clients": clients, "requests": len(latencies), "seconds": round(seconds, 3),
            "requests_per_s": round(len(latencies) / seconds, 3), "tokens_per_s": round(sum(tokens) / seconds, 1),
            "completion_tokens": sum(tokens), "mean_latency_s": round(sum(latencies) / len(latencies), 3),
            "batches": after["batches"] - before["batches"], "largest_batch": after["largest_batch"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="the run to serve (default: a freshly trained tiny run)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(args.run_dir) if args.run_dir else tiny_run(Path(scratch))
        port = free_port()
        server = start_server(run_dir, port, max(counts), args.threads)
        base, model = f"http://127.0.0.1:{port}", run_dir.resolve().name
        try:
            measure(base, model, 1, 1, args.max_tokens)  # warm-up
            rows = [measure(base, model, c, args.requests, args.max_tokens) for c in counts]
        finally:
            server.terminate()
            server.wait(60)
    print(f"run: {run_dir.resolve().name}, max_tokens={args.max_tokens}, {args.requests} requests per client, "
          f"server threads={args.threads}")
    print("| clients | requests | requests/s | tokens/s | mean latency (s) | batches | largest batch |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['requests_per_s']} | {row['tokens_per_s']} | "
              f"{row['mean_latency_s']} | {row['batches']} | {row['largest_batch']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"run": str(run_dir), "max_tokens": args.max_tokens, "rows": rows},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
