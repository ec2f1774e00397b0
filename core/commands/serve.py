"""``tuneforge serve``: an OpenAI-compatible HTTP server for one or more tuned runs (docs/serving.md).

``run_dir=`` may be given several times (or name a folder of runs): the base model is loaded
once and each run's adapter is added to it by name (:mod:`tuneforge.serving.adapters`).  Keys
may be written with a ``serve.`` prefix (``serve.max_batch_size=16``).  The server runs on
uvicorn until SIGTERM or Ctrl-C: it then stops accepting connections, finishes the requests in
flight (for at most ``shutdown_timeout`` seconds) and ends the process with status 0
(``os._exit``: the command never returns to its caller).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from tuneforge.commands.key_values import (ArgumentError, Option, _non_negative_int, _positive_int, format_options,
                                           parse_bool, parse_key_values, run_dir_argument, wants_help)

#: the environment variable holding the API key (used when ``api_key=`` is not given)
API_KEY_VARIABLE = "TUNEFORGE_SERVE_API_KEY"


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be in 1..65535")
    return value


SERVE_OPTIONS = {
    "run_dir": Option("run directory written by `tuneforge train`, or a folder of them, or a model folder "
                      "written by `tuneforge export` (served alone); repeat the key to serve several runs of "
                      "one base", required=True),
    "host": Option("address to listen on; 0.0.0.0 listens on every interface", str, "127.0.0.1"),
    "port": Option("TCP port", _port, 8000),
    "device": Option("auto (cuda when available), cpu, cuda, cuda:N ...", str, "auto"),
    "force": Option("serve runs whose status is running, failed or interrupted", parse_bool, False),
    "api_key": Option(f"key clients must send as 'Authorization: Bearer <key>' (default: ${API_KEY_VARIABLE}; "
                      "unset: no key)", str, None),
    "max_batch_size": Option("most sequences generated together in one batch", _positive_int, 8),
    "max_queue": Option("most requests waiting; more get 429", _positive_int, 64),
    "batch_wait_ms": Option("how long the worker waits for more requests to batch with the first", _non_negative_int,
                            10),
    "max_tokens": Option("reply length when a request gives no max_tokens (cut to the context)", _positive_int, 256),
    "max_body_bytes": Option("largest request body; larger ones get 413", _positive_int, 1_000_000),
    "threads": Option("torch CPU threads of the generation worker (0: torch's default)", _non_negative_int, 0),
    "shutdown_timeout": Option("seconds to finish requests in flight after SIGTERM", _positive_int, 30),
    "log_level": Option("uvicorn's log level: critical, error, warning, info, debug", str, "info"),
}


def parse_serve_args(args: list) -> dict:
    """The values of ``args`` (``serve.`` prefixes dropped); ``run_dir`` is a list, the only repeatable key."""
    plain = [arg[len("serve."):] if arg.startswith("serve.") else arg for arg in args]
    run_dirs = [run_dir_argument(arg.partition("=")[2]) for arg in plain if arg.partition("=")[0].strip() == "run_dir"]
    others = [arg for arg in plain if arg.partition("=")[0].strip() != "run_dir"]
    values = parse_key_values(others + [f"run_dir={run_dirs[0]}"] if run_dirs else others, SERVE_OPTIONS, "serve")
    if any(not path for path in run_dirs):
        raise ArgumentError("tuneforge serve: run_dir= is empty; give a run directory")
    values["run_dir"] = run_dirs
    if values["api_key"] is None:
        values["api_key"] = os.environ.get(API_KEY_VARIABLE) or None
    if values["log_level"] not in ("critical", "error", "warning", "info", "debug"):
        raise ArgumentError(f"tuneforge serve: log_level={values['log_level']!r} is invalid; valid: critical, error, "
                            "warning, info, debug")
    return values


def _require_serve_extra() -> None:
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ArgumentError(f"tuneforge serve needs {' and '.join(missing)}: pip install 'tuneforge[serve]'")


def announce_system_prompts(registry) -> None:
    """One line on stderr for each served model whose chat requests get a training system prompt by default."""
    from tuneforge.commands.generate import describe_system_prompt

    for name, served in registry.models.items():
        if served.system_prompt:
            hint = "chat requests without a system message get it"
            print(f"tuneforge serve: model {name}: {describe_system_prompt(served.system_prompt, hint)}",
                  file=sys.stderr, flush=True)


def serve_command(args: list) -> None:
    """``tuneforge serve run_dir=<run> [run_dir=<run> ...] [host=127.0.0.1 port=8000 ...]``."""
    if wants_help(args):
        print(format_options(SERVE_OPTIONS, "serve", "Serve tuned runs over an OpenAI-compatible HTTP API "
                                                      "(docs/serving.md)."), end="")
        return
    values = parse_serve_args(args)
    _require_serve_extra()
    import torch
    import uvicorn

    from tuneforge.serving.adapters import load_registry
    from tuneforge.serving.app import ServeSettings, create_app
    from tuneforge.serving.batching import BatchingWorker

    if values["threads"]:
        torch.set_num_threads(values["threads"])
    registry = load_registry(values["run_dir"], force=values["force"], device=values["device"])
    worker = BatchingWorker(registry, max_batch_size=values["max_batch_size"], max_queue=values["max_queue"],
                            batch_wait_s=values["batch_wait_ms"] / 1000)
    settings = ServeSettings(api_key=values["api_key"], max_body_bytes=values["max_body_bytes"],
                             default_max_tokens=values["max_tokens"])
    app = create_app(registry, worker, settings)
    announce_system_prompts(registry)
    print(f"tuneforge serve: models {', '.join(registry.models)} on http://{values['host']}:{values['port']}/v1"
          f"{' (API key required)' if settings.api_key else ''}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=values["host"], port=values["port"], log_level=values["log_level"],
                            timeout_graceful_shutdown=values["shutdown_timeout"], lifespan="on")
    # uvicorn handles SIGTERM/SIGINT (stop accepting, finish in-flight requests) and then raises the signal
    # again with the handler it found: a no-op one lets the command return, so the process exits 0
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # every request was answered and the worker has stopped: end the process now, without the interpreter's
    # teardown of torch and transformers (3-5 s on a busy 2-core machine), so a supervisor's SIGTERM sees
    # exit status 0 soon after the last request
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
