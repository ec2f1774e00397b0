"""The training system prompt: recorded in ``model/system_prompt.json`` when every training example starts
with the same one, and used by ``generate``, ``chat`` and ``serve`` when the user gives none, also when they are
given the folder ``tuneforge export`` wrote (which copies it); plus ``threads=`` for ``generate`` and ``chat``."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tuneforge.commands import chat as chat_module
from tuneforge.commands import generate as generate_module
from tuneforge.commands.generate import GENERATE_OPTIONS, describe_system_prompt, generate_reply, with_system
from tuneforge.commands.key_values import parse_key_values
from tuneforge.commands.run_loading import load_run, recorded_system_prompt
from tuneforge.testing import run_tiny_fit
from tuneforge.training.model_io import SYSTEM_PROMPT_RECORD, shared_system_prompt

SYSTEM = ("You route support tickets. Answer with exactly one label: billing, bug, account, other. "
          "Nothing else.")
OTHER = "You are a helpful assistant."
TICKETS = [("I was double charged", "billing"), ("The app crashes on start", "bug"),
           ("I cannot log in", "account"), ("Do you ship to Mars?", "other"),
           ("Refund my last invoice", "billing"), ("Button does nothing", "bug"),
           ("Change my email address", "account"), ("What is your office address?", "other")]
FIT = ["trainer.max_steps=3", "optim.lr=0.003", "data.val_size=4", "baselines=[]"]


def write_records(path, systems):
    """Chat records over ``TICKETS`` (twice, numbered), the i-th starting with the system message
    ``systems[i % len]``."""
    rows = []
    for i, (ticket, label) in enumerate(TICKETS * 2):
        rows.append({"messages": [{"role": "system", "content": systems[i % len(systems)]},
                                  {"role": "user", "content": f"{ticket} (ticket {i})"},
                                  {"role": "assistant", "content": label}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def cli(args, stdin=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=timeout)


@pytest.fixture(scope="module")
def same_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("same-system")
    data = write_records(root / "tickets.jsonl", [SYSTEM])
    return run_tiny_fit(root / "run", overrides=[*FIT, f"data.path={data}"]).run_dir


@pytest.fixture(scope="module")
def differing_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("differing-system")
    data = write_records(root / "tickets.jsonl", [SYSTEM, OTHER])
    return run_tiny_fit(root / "run", overrides=[*FIT, f"data.path={data}"]).run_dir


@pytest.fixture(scope="module")
def same_loaded(same_run):
    return load_run(same_run, device="cpu")


@pytest.fixture
def replies(monkeypatch):
    """The conversations ``generate``/``chat`` hand to ``generate_reply`` (which answers "ok")."""
    seen = []

    def fake_reply(loaded, messages, out=None, **kwargs):
        seen.append([dict(m) for m in messages])
        if out is not None:
            out.write("ok")
        return "ok"

    monkeypatch.setattr(generate_module, "generate_reply", fake_reply)
    monkeypatch.setattr(chat_module, "generate_reply", fake_reply)
    return seen


# ----------------------------------------------------------------------------- recorded at training time


def test_shared_system_prompt_of_examples():
    def example(*messages):
        return {"messages": [{"role": role, "content": text} for role, text in messages]}

    same = [example(("system", "S"), ("user", "a"), ("assistant", "b")), example(("system", "S"), ("user", "c"))]
    assert shared_system_prompt(same) == "S"
    assert shared_system_prompt(same + [example(("system", "T"), ("user", "a"))]) is None  # another one
    assert shared_system_prompt(same + [example(("user", "a"), ("assistant", "b"))]) is None  # one has none
    assert shared_system_prompt(same + [{"input_ids": [1, 2], "labels": [1, 2]}]) is None  # a text example
    assert shared_system_prompt([example(("system", ""), ("user", "a"))]) is None
    assert shared_system_prompt([]) is None


def test_recorded_when_every_training_example_shares_one_system_prompt(same_run, same_loaded):
    record = json.loads((same_run / "model" / SYSTEM_PROMPT_RECORD).read_text(encoding="utf-8"))
    assert record == {"system_prompt": SYSTEM}
    assert recorded_system_prompt(same_run) == SYSTEM
    assert same_loaded.system_prompt == SYSTEM


def test_not_recorded_when_the_system_prompts_differ(differing_run):
    assert not (differing_run / "model" / SYSTEM_PROMPT_RECORD).exists()
    assert recorded_system_prompt(differing_run) is None
    assert load_run(differing_run, device="cpu").system_prompt is None


# ----------------------------------------------------------------------------- generate and chat


def test_describe_system_prompt_is_one_short_line():
    line = describe_system_prompt(SYSTEM)
    assert line == ('system prompt: the one every training example had ("You route support tickets. Answer with '
                    f'exactly one label:...", {len(SYSTEM)} chars); system="" for none')
    assert describe_system_prompt("Be\nterse.") == ('system prompt: the one every training example had ("Be terse.", '
                                                    '9 chars); system="" for none')


def test_generate_uses_the_training_system_prompt_by_default(same_run, same_loaded):
    """The real command in a subprocess (with threads=1): the reply is generate_reply's with the training system
    message first, and stderr says which system prompt was used."""
    _generate_replies_with_the_system_prompt(same_run, same_loaded)


def _generate_replies_with_the_system_prompt(run_dir, loaded) -> None:
    """``tuneforge generate run_dir=<run_dir>`` (a subprocess) replies as ``loaded`` does with the training
    system message first, and says on stderr which system prompt it used."""
    prompt = "I was double charged"
    result = cli(["generate", f"run_dir={run_dir}", f"prompt={prompt}", "max_new_tokens=12", "device=cpu",
                  "threads=1"])
    assert result.returncode == 0, result.stderr
    expected = generate_reply(loaded, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                              max_new_tokens=12)
    assert result.stdout == expected + "\n"
    assert describe_system_prompt(SYSTEM) in result.stderr.splitlines()


@pytest.mark.parametrize("given, expected", [(None, [SYSTEM]), ("Be terse.", ["Be terse."]), ("", [])])
def test_generate_system_key_overrides_or_removes_it(same_run, replies, capsys, given, expected):
    args = [f"run_dir={same_run}", "prompt=hi", "device=cpu"] + ([f"system={given}"] if given is not None else [])
    generate_module.generate_command(args)
    captured = capsys.readouterr()
    assert replies == [[{"role": "system", "content": s} for s in expected] + [{"role": "user", "content": "hi"}]]
    assert captured.out == "ok\n"
    assert ("system prompt: the one every training example had" in captured.err) == (given is None)


def test_generate_says_nothing_when_the_system_prompts_differed(differing_run, replies, capsys):
    generate_module.generate_command([f"run_dir={differing_run}", "prompt=hi", "device=cpu"])
    assert replies == [[{"role": "user", "content": "hi"}]]
    assert "system prompt" not in capsys.readouterr().err


@pytest.mark.parametrize("given, expected", [(None, [SYSTEM]), ("Be terse.", ["Be terse."]), ("", [])])
def test_chat_uses_overrides_or_removes_it_and_reset_keeps_it(same_run, replies, capsys, monkeypatch, given,
                                                               expected):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n/reset\nAgain\n"))
    args = [f"run_dir={same_run}", "device=cpu", "threads=1"] + ([f"system={given}"] if given is not None else [])
    chat_module.chat_command(args)
    captured = capsys.readouterr()
    system = [{"role": "system", "content": s} for s in expected]
    assert replies == [system + [{"role": "user", "content": "Hello"}], system + [{"role": "user", "content": "Again"}]]
    assert captured.out == "ok\nok\n"
    assert captured.err.count("system prompt: the one every training example had") == (given is None)


def test_threads_is_a_key_of_generate_and_chat(same_run, replies, monkeypatch):
    import torch

    values = parse_key_values(["run_dir=r", "prompt=x", "threads=3"], GENERATE_OPTIONS, "generate")
    assert values["threads"] == 3
    assert parse_key_values(["run_dir=r", "prompt=x"], GENERATE_OPTIONS, "generate")["threads"] == 0
    assert "threads" in chat_module.CHAT_OPTIONS
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    generate_module.generate_command([f"run_dir={same_run}", "prompt=hi", "device=cpu", "threads=2"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n"))
    chat_module.chat_command([f"run_dir={same_run}", "device=cpu", "threads=1"])
    generate_module.generate_command([f"run_dir={same_run}", "prompt=hi", "device=cpu"])  # 0: torch's default
    assert calls == [2, 1]


# ----------------------------------------------------------------------------- serve


def test_with_system_adds_it_only_to_a_conversation_without_one():
    user = [{"role": "user", "content": "hi"}]
    assert with_system(user, "S") == [{"role": "system", "content": "S"}] + user
    own = [{"role": "system", "content": "mine"}] + user
    assert with_system(own, "S") == own
    assert with_system(user, None) == user
    empty = [{"role": "system", "content": ""}] + user
    assert with_system(empty, "S") == user  # an empty system message asks for none
    assert with_system(empty, None) == empty  # without a training one, the request is rendered as sent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_gives_the_training_system_prompt_to_chat_requests_without_one(same_run, same_loaded):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", f"run_dir={same_run}", f"port={port}",
                                "device=cpu", "log_level=warning", "threads=1"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "tuneforge serve did not answer /health within 120 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)

        def served(messages):
            body = {"model": same_run.name, "messages": messages, "max_tokens": 12, "temperature": 0}
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["message"]["content"], response.json()["usage"]["prompt_tokens"]

        user = [{"role": "user", "content": "I was double charged"}]
        own = [{"role": "system", "content": "Be terse."}] + user
        trained = [{"role": "system", "content": SYSTEM}] + user
        without, without_tokens = served(user)
        assert without == generate_reply(same_loaded, trained, max_new_tokens=12)
        with_own, own_tokens = served(own)
        assert with_own == generate_reply(same_loaded, own, max_new_tokens=12)
        none, none_tokens = served([{"role": "system", "content": ""}] + user)  # asks for no system message
        assert none == generate_reply(same_loaded, user, max_new_tokens=12)
        prompt_tokens = {name: len(same_loaded.tokenizer(generate_module.build_prompt(same_loaded, messages),
                                                         add_special_tokens=False)["input_ids"])
                         for name, messages in (("trained", trained), ("own", own), ("none", user))}
        assert (without_tokens, own_tokens, none_tokens) == (prompt_tokens["trained"], prompt_tokens["own"],
                                                             prompt_tokens["none"])
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    hint = "chat requests without a system message get it"
    assert f"tuneforge serve: model {same_run.name}: {describe_system_prompt(SYSTEM, hint)}" in output.splitlines()


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def exported(same_run, tmp_path_factory):
    """The real ``tuneforge export`` of the run whose training examples all started with ``SYSTEM``."""
    out = tmp_path_factory.mktemp("export") / "tickets-model"
    result = cli(["export", f"run_dir={same_run}", f"out={out}"])
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_export_carries_the_training_system_prompt_and_generate_uses_it(exported):
    assert json.loads((exported / SYSTEM_PROMPT_RECORD).read_text(encoding="utf-8")) == {"system_prompt": SYSTEM}
    loaded = load_run(exported, device="cpu")  # the merged model, no adapter
    assert loaded.system_prompt == SYSTEM and not hasattr(loaded.model, "peft_config")
    _generate_replies_with_the_system_prompt(exported, loaded)


def test_chat_and_serve_of_an_export_use_its_system_prompt(exported, same_run, replies, monkeypatch):
    from tuneforge.commands.run_loading import RunDirectoryError
    from tuneforge.serving.adapters import load_registry

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n"))
    chat_module.chat_command([f"run_dir={exported}", "device=cpu", "threads=1"])
    assert replies == [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello"}]]
    registry = load_registry([exported], device="cpu")
    assert list(registry.models) == [exported.name]  # a merged model: no adapter to switch off for "base"
    assert registry.models[exported.name].system_prompt == SYSTEM
    with pytest.raises(RunDirectoryError, match="is an exported \\(merged\\) model, so it cannot share a base"):
        load_registry([same_run, exported], device="cpu")


def test_an_export_of_a_run_without_a_shared_system_prompt_has_none(differing_run, tmp_path):
    from tuneforge.commands.export import export_run

    out = export_run(differing_run, tmp_path / "export")
    assert not (out / SYSTEM_PROMPT_RECORD).exists()
    assert load_run(out, device="cpu").system_prompt is None


def test_an_exports_chat_template_defaults_to_the_training_system_prompt(exported, same_run, same_loaded, tmp_path):
    """transformers, vLLM, SGLang (and llama.cpp from a GGUF's metadata) render the export's template
    without tuneforge: a conversation without a system message gets the training one, as in training."""
    import transformers

    from tuneforge.commands.export import export_run

    trained = same_loaded.tokenizer  # the run's tokenizer: the chat template training used
    assert isinstance(trained.chat_template, str)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
    user = [{"role": "user", "content": "I was double charged"}]
    own = [{"role": "system", "content": "Answer in French."}, *user]

    def rendered(tok, messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    assert rendered(tokenizer, user) == rendered(trained, [{"role": "system", "content": SYSTEM}, *user])
    assert rendered(tokenizer, own) == rendered(trained, own)  # a system message of the request wins
    # tuneforge's own commands add the system prompt themselves (system="" means none): the template as trained
    assert load_run(exported, device="cpu").tokenizer.chat_template == trained.chat_template
    plain = export_run(same_run, tmp_path / "plain", system_prompt=False)
    assert transformers.AutoTokenizer.from_pretrained(str(plain)).chat_template == trained.chat_template


def test_the_default_system_prompt_survives_quotes_newlines_and_jinja_syntax_in_it(same_loaded):
    from tuneforge.commands.export_folder import with_default_system, without_default_system

    tokenizer = same_loaded.tokenizer
    template = tokenizer.chat_template
    tricky = 'Say "yes" or \'no\'.\nNever print {{ x }}, {% raw %} or %} \\n literally. Ünïcode ✓'
    user = [{"role": "user", "content": "Hi"}]
    tokenizer.chat_template = with_default_system(with_default_system(template, "an earlier prompt"), tricky)
    try:
        assert "an earlier prompt" not in tokenizer.chat_template  # wrapped anew, not twice
        wrapped = tokenizer.apply_chat_template(user, tokenize=False)
        tokenizer.chat_template = template
        assert wrapped == tokenizer.apply_chat_template([{"role": "system", "content": tricky}, *user], tokenize=False)
    finally:
        tokenizer.chat_template = template
    assert without_default_system(with_default_system(template, tricky)) == template
    assert without_default_system(None) is None


def test_a_gguf_exports_chat_template_defaults_to_the_training_system_prompt(same_run, same_loaded, tmp_path):
    import transformers

    from tuneforge.commands.export import export_gguf

    path = export_gguf(same_run, tmp_path / "tickets.gguf", dtype="f32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    user = [{"role": "user", "content": "The app crashes on start"}]
    assert (tokenizer.apply_chat_template(user, tokenize=False)
            == same_loaded.tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, *user], tokenize=False))
