"""``tuneforge serve`` on two tiny LoRA runs of one base, called over HTTP on 127.0.0.1 with the
official ``openai`` client (and httpx for the requests the client would not send)."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from tuneforge.commands.generate import generate_reply  # noqa: E402
from tuneforge.commands.run_loading import RunDirectoryError, load_run  # noqa: E402
from tuneforge.serving.adapters import load_registry  # noqa: E402
from tuneforge.serving.batching import BatchingWorker, QueueFull  # noqa: E402
from tuneforge.serving.decoding import Job  # noqa: E402
from tuneforge.testing import run_tiny_fit  # noqa: E402

# as in test_inference: 3 steps move the adapters measurably; the two runs differ by their seed
FIT = ["trainer.max_steps=3", "optim.lr=0.003"]
CANDIDATES = ("Hello!", "Name a colour.", "What is 2+2?", "Tell me a story", "Why?", "Good morning", "x")
CONTEXT = 1024  # the tiny model's max_position_embeddings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``tuneforge serve`` subprocess on a free local port."""

    def __init__(self, run_dirs, *options, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [f"run_dir={d}" for d in run_dirs] + [f"port={self.port}", "device=cpu", "log_level=warning", *options]
        environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        self.process = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", *args], env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tuneforge serve exited {self.process.returncode}: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError("tuneforge serve did not answer /health within 120 s")

    def client(self, api_key="none", **kwargs):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    return {name: run_tiny_fit(root / name, overrides=[*FIT, f"seed={seed}"]).run_dir
            for name, seed in (("alpha", 1), ("beta", 2))}


@pytest.fixture(scope="module")
def server(runs):
    served = Server(runs.values(), "max_batch_size=4", "max_queue=8", "batch_wait_ms=20", "max_body_bytes=100000")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def expected(runs):
    """A prompt and ``generate_reply``'s greedy answers (what ``tuneforge generate`` prints) for alpha, beta
    and the base model, where all three differ and alpha's is at least 8 characters long."""
    alpha, beta = load_run(runs["alpha"], device="cpu"), load_run(runs["beta"], device="cpu")

    def reply(loaded, prompt, base=False):
        messages = [{"role": "user", "content": prompt}]
        if base:
            with loaded.model.disable_adapter():
                return generate_reply(loaded, messages, max_new_tokens=24)
        return generate_reply(loaded, messages, max_new_tokens=24)

    for prompt in CANDIDATES:
        answers = {"alpha": reply(alpha, prompt), "beta": reply(beta, prompt), "base": reply(alpha, prompt, True)}
        if len(answers["alpha"]) >= 8 and len(set(answers.values())) == 3:
            return prompt, answers
    pytest.fail("no candidate prompt gives three different greedy answers")


def chat(client, model, prompt, max_tokens=24, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=max_tokens, temperature=0, **kwargs)


# ----------------------------------------------------------------------------- the OpenAI client


def test_models_lists_each_run_and_base(server):
    assert [m.id for m in server.client().models.list()] == ["alpha", "beta", "base"]


def test_chat_streamed_equals_whole_equals_generate(server, expected):
    prompt, answers = expected
    client = server.client()
    whole = chat(client, "alpha", prompt)
    assert whole.choices[0].message.content == answers["alpha"]
    assert whole.usage.completion_tokens >= 1
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(chat(client, "alpha", prompt, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answers["alpha"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # token by token
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_model_name_switches_adapter_and_base(server, expected):
    prompt, answers = expected
    client = server.client()
    for name in ("beta", "base", "alpha", "base", "beta"):
        assert chat(client, name, prompt).choices[0].message.content == answers[name], name


def test_completions_n_stop_and_seed(server, expected):
    client = server.client()
    first = client.completions.create(model="alpha", prompt="Once", max_tokens=12, temperature=1.0, n=3, seed=7)
    again = client.completions.create(model="alpha", prompt="Once", max_tokens=12, temperature=1.0, n=3, seed=7)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1  # sampled choices differ from each other
    assert first.usage.prompt_tokens == 4  # "Once": 4 byte tokens, counted once for the 3 choices
    assert first.usage.completion_tokens == sum(12 if c.finish_reason == "length" else 0 for c in first.choices) \
        or any(c.finish_reason == "stop" for c in first.choices)
    prompt, answers = expected
    start = next(i for i in range(2, len(answers["alpha"]) - 1) if answers["alpha"][i:i + 2].isascii())
    stop = answers["alpha"][start:start + 2]
    cut = chat(client, "alpha", prompt, stop=[stop]).choices[0]
    assert cut.message.content == answers["alpha"][:answers["alpha"].index(stop)]
    assert cut.finish_reason == "stop"


def test_32_concurrent_requests_each_answered_once(server):
    """Distinct prompt lengths identify each answer by its prompt_tokens: none lost, none duplicated."""
    client = server.client()
    before = server.health()
    rss_before = _peak_rss_kib(server.process.pid)

    def ask(i):
        try:
            reply = client.completions.create(model="alpha" if i % 2 else "beta", prompt="a" * (i + 1),
                                              max_tokens=16, temperature=0)
            return i, 200, reply
        except openai.RateLimitError as exc:
            return i, 429, exc.response.json()

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(32)))
    assert sorted(i for i, _, _ in results) == list(range(32))
    assert {status for _, status, _ in results} <= {200, 429}
    answered = [(i, reply) for i, status, reply in results if status == 200]
    assert len(answered) >= 8
    assert len({reply.id for _, reply in answered}) == len(answered)
    for i, reply in answered:
        assert reply.usage.prompt_tokens == i + 1
        assert len(reply.choices) == 1 and reply.choices[0].finish_reason in ("stop", "length")
    for _, status, body in results:
        if status == 429:
            assert set(body["error"]) >= {"message", "type", "param"} and "queue is full" in body["error"]["message"]
    after = server.health()
    assert after["largest_batch"] > 1  # requests that arrived together were generated together
    assert after["batches"] - before["batches"] < len(answered)
    assert _peak_rss_kib(server.process.pid) - rss_before < 400_000  # the bounded queue bounds memory


def _peak_rss_kib(pid) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    pytest.skip("no /proc/<pid>/status VmHWM on this system")


def test_a_client_leaving_mid_stream_frees_its_sequence(server):
    client = server.client()
    # a prompt whose greedy answer does not end by itself within 200 tokens
    longest = next(p for p in CANDIDATES if chat(client, "beta", p, max_tokens=200).choices[0].finish_reason == "length")
    abandoned = server.health()["abandoned"]
    stream = chat(client, "beta", longest, max_tokens=900, stream=True)
    for received, _ in enumerate(stream):
        if received == 3:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while server.health()["abandoned"] == abandoned and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.health()["abandoned"] == abandoned + 1


# ----------------------------------------------------------------------------- bad requests


BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "alpha", "messages": [', 400, None),
    ("unknown model", {"model": "gamma", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ("max_tokens above the context", {"model": "alpha", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": CONTEXT + 1}, 400, "max_tokens"),
    ("empty messages", {"model": "alpha", "messages": []}, 400, "messages"),
    ("wrong role", {"model": "alpha", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("prompt longer than the context", {"model": "alpha", "messages": [{"role": "user", "content": "z" * 2000}]},
     400, "messages"),
    ("prompt plus max_tokens above the context", {"model": "alpha", "max_tokens": 1000,
                                                  "messages": [{"role": "user", "content": "z" * 100}]},
     400, "max_tokens"),
    ("unsupported field", {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "tools": []},
     400, "tools"),
    ("temperature out of range", {"model": "alpha", "messages": [{"role": "user", "content": "hi"}],
                                  "temperature": 5}, 400, "temperature"),
    ("n above max_batch_size", {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "n": 5},
     400, "n"),
    ("body over the size limit", {"model": "alpha", "messages": [{"role": "user", "content": "y" * 150_000}]},
     413, None),
]


@pytest.mark.parametrize("name, body, status, param", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_openai_error(server, name, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/chat/completions", content=content, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param"}
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert "\n" not in error["message"] and "Traceback" not in response.text


def test_unknown_endpoint_and_the_client_s_own_error_class(server):
    response = httpx.get(f"{server.url}/v1/files", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError, match="gamma"):
        chat(server.client(), "gamma", "hi")


def test_queue_bound_refuses_instead_of_waiting(runs):
    """The worker's queue, without its thread running: the job after ``max_queue`` is refused at once."""
    registry = load_registry([runs["alpha"]], device="cpu")
    worker = BatchingWorker(registry, max_batch_size=2, max_queue=3)
    jobs = [Job(model="alpha", prompt_ids=[1, 2], max_new_tokens=2, temperature=0, top_p=1, emit=print)
            for _ in range(4)]
    for job in jobs[:3]:
        worker.submit(job)
    with pytest.raises(QueueFull):
        worker.submit(jobs[3])
    assert worker.queued() == 3


# ----------------------------------------------------------------------------- start-up refusals


def test_runs_of_different_bases_are_refused_in_one_line(runs, tmp_path):
    other = tmp_path / "other-base"
    import shutil

    shutil.copytree(runs["beta"], other)
    config = OmegaConf.load(other / "config.yaml")  # as if beta had been trained on a base of another seed
    config.model.seed = 5
    OmegaConf.save(config, other / "config.yaml")
    record = json.loads((other / "model" / "run_config.json").read_text())
    (other / "model" / "run_config.json").write_text(json.dumps({**record, "model.seed": 5}))
    with pytest.raises(RunDirectoryError) as caught:
        load_registry([runs["alpha"], other], device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "another base" in message and "model.seed=5" in message


# ----------------------------------------------------------------------------- API key and SIGTERM


def test_api_key_then_sigterm_during_a_stream(runs):
    served = Server([runs["alpha"]], env={"TUNEFORGE_SERVE_API_KEY": "s3cret-key"})
    try:
        with pytest.raises(openai.AuthenticationError):
            served.client(api_key="wrong").models.list()
        assert httpx.get(f"{served.url}/v1/models", timeout=10).status_code == 401
        client = served.client(api_key="s3cret-key")
        assert [m.id for m in client.models.list()] == ["alpha", "base"]

        stream = client.completions.create(model="alpha", prompt="Go", max_tokens=120, temperature=0, stream=True)
        chunks = [next(iter(stream))]
        served.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        chunks += list(stream)  # the stream runs to its end
        assert len(chunks) > 10  # most of it after the signal
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert chunks[-1].usage.completion_tokens >= len(chunks) - 1 >= 1
        assert served.process.wait(10) == 0
        assert time.monotonic() - signalled < 10
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(f"{served.url}/health", timeout=2)
    finally:
        served.stop()


# ----------------------------------------------------------------------------- the command's arguments


def test_serve_arguments_repeat_run_dir_and_take_the_serve_prefix(monkeypatch):
    from tuneforge.commands.key_values import ArgumentError
    from tuneforge.commands.serve import parse_serve_args

    monkeypatch.setenv("TUNEFORGE_SERVE_API_KEY", "from-the-env")
    values = parse_serve_args(["run_dir=runs/a", "serve.max_batch_size=3", "run_dir=runs/b", "port=9001"])
    assert values["run_dir"] == ["runs/a", "runs/b"]
    assert (values["max_batch_size"], values["port"], values["host"]) == (3, 9001, "127.0.0.1")
    assert values["api_key"] == "from-the-env"
    assert parse_serve_args(["run_dir=a", "api_key=given"])["api_key"] == "given"
    for args, message in ((["run_dir=a", "max_batch=2"], "unknown key 'max_batch' (did you mean 'max_batch_size'?)"),
                          (["port=80"], "missing required run_dir=..."),
                          (["run_dir=a", "port=70000"], "port='70000' is invalid: must be in 1..65535"),
                          (["run_dir=a", "log_level=loud"], "log_level='loud' is invalid")):
        with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            parse_serve_args(args)


def test_serve_help_lists_its_keys():
    done = subprocess.run([sys.executable, "-m", "tuneforge", "serve", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    for key in ("run_dir", "host", "port", "api_key", "max_batch_size", "max_queue", "max_body_bytes"):
        assert f"  {key} " in done.stdout
