"""A plugin function that returns the wrong thing is one line naming the plugin, what came back and what
is valid (fixture package ``plugreturns``), not a traceback from where the host first uses the value."""

import json

import pytest
import torch

from helpers import FIXTURES, run_cli
from tuneforge.errors import PluginError
from tuneforge.host.guard import Returns, checked_result, instance_of, spec_call, type_name
from tuneforge.losses import LossOutput, loss_output_problem

PLUGIN = "plugin 'wrongreturns' (distribution 'plugreturns 0.1.0')"
COMMON = ["trainer.max_steps=1", "threads=1", "trainer.enable_progress_bar=false", "baselines=[]",
          "evaluators=[]", "memorisation.sample=0"]

CASES = {
    "dataset": (["model=tiny", "data=listsplits"],
                "dataset 'listsplits', load returned list of 1; it must return tuneforge.data.DataSplits"),
    "model source": (["model=modelonly"],
                     "model source 'modelonly', load returned the model alone (LlamaForCausalLM); it must return "
                     "a tuple (model, tokenizer)"),
    "adapter": (["model=tiny", "adapter=noapply"],
                "adapter 'noapply', apply returned None; it must return the model with the adapter applied"),
    # blamed on the adapter, before the data loads, not on the loss at the first step ("has no gradient")
    "adapter with nothing to train": (["model=tiny", "adapter=frozen"],
                                      "adapter 'frozen', apply returned a LlamaForCausalLM with no parameter to "
                                      "train (all 107,328 have requires_grad=False); it must return the model with "
                                      "the adapter applied (a torch.nn.Module) and the parameters to train left "
                                      "with requires_grad=True: freeze only the rest, or wrap the model with "
                                      "peft.get_peft_model"),
    "loss build": (["model=tiny", "loss=badloss", "loss.mistake=build_none"],
                   "loss 'badloss', build returned None; it must return the loss function"),
    "bare tensor": (["model=tiny", "loss=badloss", "loss.mistake=bare_tensor"],
                    "loss 'badloss', loss_fn returned Tensor; it must return tuneforge.LossOutput("),
    "vector": (["model=tiny", "loss=badloss", "loss.mistake=vector"],
               "loss 'badloss', loss_fn returned a LossOutput whose loss is a torch.float32 tensor of shape (2,)"),
    "detached": (["model=tiny", "loss=badloss", "loss.mistake=detached"],
                 "loss 'badloss', loss_fn returned a LossOutput whose loss has no gradient (detached"),
    "num_tokens": (["model=tiny", "loss=badloss", "loss.mistake=num_tokens"],
                   "loss 'badloss', loss_fn returned a LossOutput whose num_tokens is 'many'"),
    "callback": (["model=tiny", "callbacks=[notacallback]"],
                 "callback 'notacallback', build returned object; it must return a lightning.pytorch.Callback"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wrong_return_stops_the_run_with_one_line(tmp_path, case):
    """Through the CLI in a process of its own (a run sets up Hydra's logging, which must not outlive
    the test's captured streams)."""
    overrides, expected = CASES[case]
    run_dir = tmp_path / "run"
    result = run_cli(["train", *overrides, *COMMON, f"run_dir={run_dir}"], site_dirs=["returns"],
                     env={"TUNEFORGE_DISABLE_PLUGINS": "", "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr
    assert "Traceback" not in err, err[-3000:]
    errors = [line[len("tuneforge: error: "):] for line in err.splitlines() if line.startswith("tuneforge: error:")]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith(f"{PLUGIN}: {expected}"), errors[0]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == errors[0]


def test_loss_output_problems_say_what_is_wrong():
    leaf = torch.ones(1, requires_grad=True)
    good = LossOutput(loss=(leaf * 2).sum(), num_tokens=3)
    assert loss_output_problem(good) is None
    assert loss_output_problem(LossOutput(loss=(leaf * 2).sum(), num_tokens=torch.tensor(4))) is None
    with torch.no_grad():  # validation: no gradient expected
        assert loss_output_problem(LossOutput(loss=(leaf * 2).sum())) is None
    assert loss_output_problem({"loss": 1.0}) == "dict"
    assert loss_output_problem(LossOutput(loss=0.5)) == "a LossOutput whose loss is float"
    assert "num_tokens is True" in loss_output_problem(LossOutput(loss=(leaf * 2).sum(), num_tokens=True))
    assert "num_tokens is -1" in loss_output_problem(LossOutput(loss=(leaf * 2).sum(), num_tokens=-1))
    assert "metrics is list" in loss_output_problem(LossOutput(loss=(leaf * 2).sum(), metrics=[1]))
    assert "torch.int64 tensor" in loss_output_problem(LossOutput(loss=torch.tensor(3)))


def test_checked_results_name_an_unregistered_spec_as_plugin_code():
    class Spec:
        kind, name = "retriever", "mine"

    with pytest.raises(PluginError, match=r"^plugin code: retriever 'mine', build returned None; it must return "
                                          r"a thing$"):
        spec_call(Spec(), "build", lambda: None, returns=instance_of(int, "a thing"))
    assert spec_call(Spec(), "build", lambda: 3, returns=instance_of(int, "a thing")) == 3
    assert checked_result(None, "x", [1], None) == [1]
    assert checked_result(None, "x", 1, Returns(lambda r: None, "anything")) == 1
    assert [type_name(v) for v in (None, (1, 2), [], {}, "s")] == ["None", "tuple of 2", "list of 0", "dict", "str"]


def test_export_of_an_adapter_whose_merge_returns_the_peft_model_unmerged_is_one_line_and_writes_nothing(
        tmp_path, monkeypatch, capsys):
    """Adapter ``unmerged`` gives ``merge=lambda model: model``: exporting its peft model would write only the
    adapter files (``base_model_name_or_path: null``), a folder nothing can load, and report success."""
    import importlib

    from tuneforge.commands.cli import main
    from tuneforge.testing import run_tiny_fit

    monkeypatch.syspath_prepend(str(FIXTURES / "returns"))
    importlib.invalidate_caches()
    run = run_tiny_fit(tmp_path / "run", overrides=["adapter=unmerged", *COMMON]).run_dir
    capsys.readouterr()
    out = tmp_path / "exported"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", f"run_dir={run}", f"out={out}"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"tuneforge: error: {PLUGIN}: adapter 'unmerged', merge returned PeftModel, a peft model whose "
                     "adapter is not merged into the base weights; it must return the merged model: a plain "
                     "transformers model that save_pretrained writes whole (for a peft model, "
                     "model.merge_and_unload())"], lines
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_plan_refuses_an_adapter_that_leaves_nothing_to_train_as_train_does(tmp_path):
    result = run_cli(["plan", "model=tiny", "adapter=frozen"], site_dirs=["returns"],
                     env={"TUNEFORGE_DISABLE_PLUGINS": "", "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.startswith(f"tuneforge: error: {PLUGIN}: {CASES['adapter with nothing to train'][1][:60]}")
