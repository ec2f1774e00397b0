"""``tuneforge generate`` / ``chat`` / ``export`` on tiny runs: numbers checked against direct computation."""

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tuneforge.errors import TuneforgeError
from tuneforge.commands.export import ExportError, export_run
from tuneforge.commands.chat import chat_loop
from tuneforge.commands.generate import GENERATE_OPTIONS, build_prompt, generate_reply
from tuneforge.commands.key_values import ArgumentError, parse_key_values
from tuneforge.commands.run_loading import RunDirectoryError, load_run, read_run_config
from tuneforge.testing import run_tiny_fit

# lr high enough that 3 steps move the weights measurably away from the base model, low enough that the
# model has not yet learnt to end every answer at once
FIT = ["trainer.max_steps=3", "optim.lr=0.003"]


# ----------------------------------------------------------------------------- helpers


def base_model(run_dir):
    """The tiny base model rebuilt from the run's config, without tuneforge's loading code."""
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model_cfg = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml").model)
    assert model_cfg.pop("name") == "tiny"
    model, _ = load_tiny(TinyModelConfig(**model_cfg))
    return model.eval()


def base_plus_adapter(run_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model(run_dir), str(Path(run_dir) / "model")).eval()


def run_tokenizer(run_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(run_dir) / "model"))


def probe_ids(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"},
                                          {"role": "assistant", "content": "4, of course."}], tokenize=False)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def direct_greedy(model, tokenizer, messages, max_new_tokens):
    """Greedy decoding with plain ``model.generate`` on the chat-template prompt."""
    # return_dict=True: transformers 5 returns a BatchEncoding by default, 4.x a bare tensor
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def cli(args, stdin=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=timeout)


def copy_run(run_dir, target):
    shutil.copytree(run_dir, target)
    return target


class RecordingStream(io.StringIO):
    """Collects what a streamer writes, one entry per write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return run_tiny_fit(tmp_path_factory.mktemp("lora-run"), overrides=FIT).run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return run_tiny_fit(tmp_path_factory.mktemp("full-run"), overrides=[*FIT, "adapter=full"]).run_dir


@pytest.fixture(scope="module")
def lora_loaded(lora_run):
    return load_run(lora_run, device="cpu")


# ----------------------------------------------------------------------------- export


def test_export_lora_logits_equal_base_plus_adapter_without_tuneforge(lora_run, tmp_path):
    out = export_run(lora_run, tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}

    # load in a process where importing tuneforge fails: the folder must not need it
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tuneforge":
                    raise ImportError("tuneforge is blocked in this process")
        sys.meta_path.insert(0, Block())
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(out)!r})
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        ids = torch.tensor([{probe_ids(run_tokenizer(lora_run))[0].tolist()!r}])
        with torch.no_grad():
            torch.save(model(input_ids=ids).logits, {str(tmp_path / 'logits.pt')!r})
        print(tok.apply_chat_template([{{"role": "user", "content": "hi"}}], tokenize=False,
                                      add_generation_prompt=True), end="")
        assert "tuneforge" not in sys.modules
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    ids = probe_ids(run_tokenizer(lora_run))
    merged = torch.load(tmp_path / "logits.pt")
    reference = logits(base_plus_adapter(lora_run), ids)
    assert (logits(base_model(lora_run), ids) - reference).abs().max() > 1e-3, "the adapter should matter"
    assert (merged - reference).abs().max() < 1e-4


def test_export_ia3_merges(tmp_path):
    from transformers import AutoModelForCausalLM

    run = run_tiny_fit(tmp_path / "ia3-run", overrides=[*FIT, "adapter=ia3"]).run_dir
    assert json.loads((run / "model" / "adapter_config.json").read_text())["peft_type"] == "IA3"
    out = export_run(run, tmp_path / "merged")
    ids = probe_ids(run_tokenizer(run))
    reference = logits(base_plus_adapter(run), ids)
    assert (logits(base_model(run), ids) - reference).abs().max() > 1e-3, "the adapter should matter"
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert (logits(merged, ids) - reference).abs().max() < 1e-4


def test_prefix_tuning_generates_but_is_refused_by_export(tmp_path):
    run = run_tiny_fit(tmp_path / "prefix-run", overrides=[*FIT, "adapter=prefix"]).run_dir
    messages = [{"role": "user", "content": "Hello!"}]
    expected, _ = direct_greedy(base_plus_adapter(run), run_tokenizer(run), messages, 12)
    assert generate_reply(load_run(run, device="cpu"), messages, max_new_tokens=12) == expected

    with pytest.raises(ExportError, match="PREFIX_TUNING.*cannot be merged"):
        export_run(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_export_full_fine_tune_is_saved_as_is(full_run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tuneforge.commands.cli import main

    out = tmp_path / "exported"
    main(["export", f"run_dir={full_run}", f"out={out}"])
    assert load_file(str(out / "model.safetensors")).keys() == load_file(
        str(full_run / "model" / "model.safetensors")).keys()
    ids = probe_ids(run_tokenizer(full_run))
    exported = logits(AutoModelForCausalLM.from_pretrained(str(out)).eval(), ids)
    trained = logits(AutoModelForCausalLM.from_pretrained(str(full_run / "model")).eval(), ids)
    assert torch.equal(exported, trained)
    assert (logits(base_model(full_run), ids) - exported).abs().max() > 1e-3

    # a second export into the same folder needs overwrite=true
    with pytest.raises(ExportError, match="overwrite=true"):
        export_run(full_run, out)
    export_run(full_run, out, overwrite=True)
    assert (out / "model.safetensors").is_file()


def _disk_fills_while_the_weights_are_written(monkeypatch):
    """safetensors' own error for a full disk, after part of the file was written (as a full disk does)."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def save_file(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 16384)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)


@pytest.mark.fault(fault='`tuneforge export` onto a full disk (safetensors: No space left on device)',
                   outcome='one line `no space left on the device while writing <out>; nothing was left at out= '
                           '...`; no half-written folder (written into a temporary sibling, renamed when complete); '
                           'an earlier export replaced with overwrite=true stays whole')
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing_half_written(lora_run, tmp_path, monkeypatch):
    out = tmp_path / "merged"
    with monkeypatch.context() as patch:
        _disk_fills_while_the_weights_are_written(patch)
        with pytest.raises(ExportError) as failed:
            export_run(lora_run, out)
    line = str(failed.value)
    assert "\n" not in line and line.startswith(f"no space left on the device while writing {out}"), line
    assert list(tmp_path.iterdir()) == []  # no config.json-only folder, no temporary folder
    # an earlier export stays whole when its replacement fails
    export_run(lora_run, out)
    before = sorted(p.name for p in out.iterdir())
    with monkeypatch.context() as patch:
        _disk_fills_while_the_weights_are_written(patch)
        with pytest.raises(ExportError, match="^no space left on the device"):
            export_run(lora_run, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before and "model.safetensors" in before
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


@pytest.mark.fault(fault='`tuneforge export out=` in a read-only folder',
                   outcome='one line `cannot write the export to out=...: <folder> is not writable (Read-only file '
                           'system); ...`; nothing written')
def test_an_export_into_a_read_only_folder_is_one_line(lora_run, tmp_path, monkeypatch):
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # as in a read-only mount: nothing can be created in tmp_path/ro
        if self.parent == tmp_path / "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    with pytest.raises(ExportError) as failed:
        export_run(lora_run, tmp_path / "ro" / "x")
    assert str(failed.value) == (f"cannot write the export to out={tmp_path / 'ro' / 'x'}: {tmp_path / 'ro'} is "
                                 "not writable (Read-only file system); choose a folder you can write to")
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.fault(fault='`tuneforge export out=<a file>/x` (hf or gguf)',
                   outcome='one line `out=...: <file> is a file, not a folder; ...`, exit 2')
def test_an_export_under_a_file_is_one_line(lora_run, tmp_path):
    (tmp_path / "a-file").write_text("x")
    for fmt, out in (("hf", tmp_path / "a-file" / "x"), ("gguf", tmp_path / "a-file" / "x.gguf")):
        result = cli(["export", f"run_dir={lora_run}", f"out={out}", f"format={fmt}"], timeout=120)
        assert result.returncode == 2 and result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert lines == [f"tuneforge: error: out={out}: {tmp_path / 'a-file'} is a file, not a folder; give out= a "
                         "path under a folder"], result.stderr


def test_run_chat_template_is_saved_with_the_model_used_and_exported(tmp_path):
    """A run with data.chat_template (a .jinja file) renders evaluation, generate and export prompts with it,
    from the tokenizer saved in model/: the file is not needed after training."""
    from transformers import AutoTokenizer

    template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant] {% endif %}")
    (tmp_path / "t.jinja").write_text(template)
    run = run_tiny_fit(tmp_path / "run", overrides=[
        *FIT, f"data.chat_template={tmp_path / 't.jinja'}", "evaluators=[exact_match]",
        "evaluators.exact_match.max_new_tokens=2"]).run_dir
    (tmp_path / "t.jinja").unlink()
    assert run_tokenizer(run).chat_template == template
    rows = [json.loads(line) for line in (run / "predictions.jsonl").open() if json.loads(line)["set"] == "val"]
    assert rows and all(row["prompt"].startswith("[user] ") and row["prompt"].endswith("[assistant] ")
                        for row in rows)

    loaded = load_run(run, device="cpu")
    assert build_prompt(loaded, [{"role": "user", "content": "hi"}]) == "[user] hi\n[assistant] "
    out = export_run(run, tmp_path / "merged")
    assert AutoTokenizer.from_pretrained(str(out)).chat_template == template


def test_a_run_without_data_chat_template_keeps_the_tokenizers_own(lora_run):
    from tuneforge.plugins.models import build_tiny_tokenizer

    assert run_tokenizer(lora_run).chat_template == build_tiny_tokenizer().chat_template


def test_a_run_whose_adapter_plugin_is_gone_is_a_one_line_error(lora_run, tmp_path):
    run = copy_run(lora_run, tmp_path / "run")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.adapter.name = "vanished_adapter"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    record = json.loads((run / "model" / "run_config.json").read_text())  # what trained model/ says the same
    (run / "model" / "run_config.json").write_text(json.dumps(dict(record, **{"adapter.name": "vanished_adapter"})))
    for command in (["generate", f"run_dir={run}", "prompt=hi"], ["export", f"run_dir={run}", f"out={tmp_path / 'x'}"]):
        result = cli(command, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tuneforge: error: "), result.stderr
        assert "adapter 'vanished_adapter', which no installed plugin provides" in lines[0]
        assert "lora" in lines[0]  # the installed ones are listed
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- generate / chat


@pytest.fixture(scope="module")
def greedy_case(lora_run):
    """A prompt and its direct greedy answer (plain model.generate on base + adapter).

    The answer must be at least 8 tokens long and differ from the base model's
    answer, so that comparing with it checks that the adapter was loaded; the
    tiny model's next-token distribution is nearly flat, so some prompts end
    at once with EOS.
    """
    model, tokenizer, base = base_plus_adapter(lora_run), run_tokenizer(lora_run), base_model(lora_run)
    for prompt in ("Name a colour.", "Hello!", "What is 2+2?", "Tell me a story", "Why?", "x", "Good morning"):
        messages = [{"role": "user", "content": prompt}]
        expected, n_tokens = direct_greedy(model, tokenizer, messages, 24)
        if n_tokens >= 8 and expected and expected != direct_greedy(base, tokenizer, messages, 24)[0]:
            return prompt, expected
    pytest.fail("no candidate prompt gives a long greedy answer that the adapter changes")


def test_greedy_generate_equals_direct_model_generate(lora_loaded, greedy_case):
    prompt, expected = greedy_case
    stream = RecordingStream()
    reply = generate_reply(lora_loaded, [{"role": "user", "content": prompt}], max_new_tokens=24,
                           temperature=0.0, out=stream)
    assert reply == expected
    assert "".join(stream.writes) == reply  # what was streamed is the reply, prompt excluded


def test_sampling_is_reproducible_with_seed_and_differs_from_greedy(lora_loaded, greedy_case):
    prompt, greedy = greedy_case
    messages = [{"role": "user", "content": prompt}]
    kwargs = dict(max_new_tokens=24, temperature=1.5, top_p=1.0)
    first = generate_reply(lora_loaded, messages, seed=1, **kwargs)
    assert first == generate_reply(lora_loaded, messages, seed=1, **kwargs)
    assert first != greedy


def test_chat_loop_keeps_history(lora_run, lora_loaded):
    out = io.StringIO()
    lines = io.StringIO("Hello!\n\nAnd then?\n/exit\nnever read\n")
    messages = chat_loop(lora_loaded, lines, out, system="Be brief.", max_new_tokens=12)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Hello!", "And then?"]

    model, tokenizer = base_plus_adapter(lora_run), run_tokenizer(lora_run)
    first, _ = direct_greedy(model, tokenizer, messages[:2], 12)
    second, _ = direct_greedy(model, tokenizer, messages[:4], 12)  # the whole history is the prompt
    assert messages[2]["content"] == first
    assert messages[4]["content"] == second
    assert out.getvalue() == f"{first}\n{second}\n"


def test_generate_cli_streams_greedy_reply(lora_run, greedy_case):
    prompt, expected = greedy_case
    result = cli(["generate", f"run_dir={lora_run}", f"prompt={prompt}", "max_new_tokens=24", "temperature=0",
                  "device=cpu"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_chat_cli_two_turns_from_stdin(lora_loaded, lora_run):
    result = cli(["chat", f"run_dir={lora_run}", "max_new_tokens=10", "device=cpu"], stdin="Hi\nMore please\n")
    assert result.returncode == 0, result.stderr
    history = [{"role": "user", "content": "Hi"}]
    first = generate_reply(lora_loaded, history, max_new_tokens=10)
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "More please"}]
    second = generate_reply(lora_loaded, history, max_new_tokens=10)
    assert result.stdout == f"{first}\n{second}\n"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, message", [
    (["generate", "run_dir=RUN", "promt=hi"], "unknown key 'promt' (did you mean 'prompt'?); valid keys: run_dir"),
    (["export", "run_dir=RUN", "out=x", "merge=yes"], "unknown key 'merge'"),
    (["generate", "run_dir=RUN"], "missing required prompt=..."),
    (["chat", "run_dir=RUN", "temperature=hot"], "temperature='hot' is invalid"),
    (["generate", "run_dir=EMPTY", "prompt=hi"], "is not a tuneforge run directory: no config.yaml and no model/"),
    (["export", "run_dir=MISSING", "out=x"], "does not exist"),
])
def test_cli_errors_are_one_line(args, message, lora_run, tmp_path):
    (tmp_path / "empty").mkdir()
    paths = {"RUN": str(lora_run), "EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing")}
    command, *pairs = args
    pairs = [key + "=" + paths.get(value, value) for key, value in (pair.split("=", 1) for pair in pairs)]
    result = cli([command, *pairs], timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuneforge: error: "), result.stderr
    assert message in lines[0]


def test_unfinished_run_is_refused_unless_forced(lora_run, tmp_path):
    run = copy_run(lora_run, tmp_path / "run")
    for status in ("running", "failed"):
        (run / "status.json").write_text(json.dumps({"status": status}))
        with pytest.raises(RunDirectoryError, match=f"status is '{status}'.*force=true"):
            read_run_config(run)
        assert read_run_config(run, force=True).model.name == "tiny"
    with pytest.raises(RunDirectoryError, match="force=true"):
        export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parse_key_values():
    values = parse_key_values(["run_dir=r", "prompt=a=b c", "max_new_tokens=5", "force=yes"], GENERATE_OPTIONS,
                              "generate")
    assert values["prompt"] == "a=b c" and values["max_new_tokens"] == 5 and values["force"] is True
    assert values["temperature"] == 0.0 and values["system"] is None
    for bad in (["run_dir=r", "prompt=x", "max_new_tokens=0"], ["run_dir=r", "prompt"],
                ["run_dir=r", "prompt=x", "prompt=y"], ["run_dir=r", "prompt=x", "top_p=2"]):
        with pytest.raises(ArgumentError):
            parse_key_values(bad, GENERATE_OPTIONS, "generate")
    assert issubclass(ArgumentError, TuneforgeError) and issubclass(ExportError, TuneforgeError)


def test_help_stays_light():
    script = ("import sys; from tuneforge.commands.cli import main; main(['--help']); import tuneforge.commands.generate, tuneforge.commands.chat, "
              "tuneforge.commands.export; heavy = {'torch', 'transformers', 'peft'} & set(sys.modules); "
              "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("generate", "chat", "export"):
        assert f"\n  {command} " in result.stdout
