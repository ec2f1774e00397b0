"""``trainer.precision=auto``: the decision on mocked CPUs and timings, the calibration on real layers, and a
run that trains in what was chosen (and a resume that keeps it)."""

import json
import os
import signal
from dataclasses import dataclass

import pytest
import torch

import tuneforge
from tuneforge.testing import run_tiny_fit
from tuneforge.training import precision
from tuneforge.training.precision import choose_precision, linear_shapes


def _must_not_run(*args, **kwargs):
    raise AssertionError("no calibration expected here")


def _timed(speedup: float):
    def timings(shapes, tokens):
        return {"tokens": tokens, "fp32_s": speedup, "bf16_s": 1.0, "speedup": speedup,
                "shapes": [[i, o, c] for (i, o), c in shapes.items()]}
    return timings


class _Body(torch.nn.Module):
    """Linear layers of a small transformer's shapes (4.7M parameters), an output layer and a LoRA-like factor."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(512, 512, bias=False) for _ in range(18))
        self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(512, 8, bias=False)})
        self.head = torch.nn.Linear(512, 1000, bias=False)

    def get_output_embeddings(self):
        return self.head


def test_an_avx2_only_cpu_stays_at_float32_without_calibrating():
    choice = choose_precision("auto", accelerator="cpu", model=_Body(), bf16_units=lambda: [],
                              timings=_must_not_run)
    assert choice.precision == "32-true"
    assert "no bfloat16 matrix units" in choice.reason
    assert choice.record() == {"requested": "auto", "chosen": "32-true", "reason": choice.reason, "calibration": None}


def test_a_cpu_with_amx_trains_in_bf16_when_the_calibration_shows_it_faster():
    choice = choose_precision("auto", accelerator="cpu", model=_Body(), tokens=4096,
                              bf16_units=lambda: ["amx_bf16"], timings=_timed(2.5))
    assert choice.precision == "bf16-mixed"
    assert "amx_bf16" in choice.reason and "2.50x" in choice.reason
    assert choice.calibration["tokens"] == precision.CALIBRATION_TOKENS  # the batch is capped
    assert choice.calibration["shapes"] == [[512, 512, 18]]  # no output layer, no adapter factor


def test_bf16_units_that_do_not_pay_on_this_model_keep_float32():
    choice = choose_precision("auto", accelerator="cpu", model=_Body(), bf16_units=lambda: ["avx512_bf16"],
                              timings=_timed(1.1))
    assert choice.precision == "32-true"
    assert "only 1.10x" in choice.reason and choice.calibration["speedup"] == 1.1


def test_a_tiny_model_is_not_calibrated():
    small = torch.nn.Sequential(torch.nn.Linear(64, 64))
    choice = choose_precision("auto", accelerator="cpu", model=small, bf16_units=lambda: ["amx_bf16"],
                              timings=_must_not_run)
    assert choice.precision == "32-true" and "too small" in choice.reason


def test_a_quantized_base_keeps_float32_and_says_why():
    """A 4-bit or 8-bit base has no float matrix product to time; the reason names that, not a size."""
    body = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(18)])
    for layer in body:
        layer.weight = torch.nn.Parameter(torch.zeros(512 * 512 // 2, 1, dtype=torch.uint8), requires_grad=False)
    choice = choose_precision("auto", accelerator="cpu", model=body, bf16_units=lambda: ["amx_bf16"],
                              timings=_must_not_run)
    assert choice.precision == "32-true"
    assert "quantized (18 4-/8-bit layers)" in choice.reason and "too small" not in choice.reason


def test_several_processes_decide_on_the_cpu_alone_so_every_rank_agrees():
    choice = choose_precision("auto", accelerator="cpu", model=_Body(), processes=4,
                              bf16_units=lambda: ["amx_bf16"], timings=_must_not_run)
    assert choice.precision == "bf16-mixed" and "4 processes" in choice.reason


def test_a_tiny_model_stays_at_float32_in_several_processes_too():
    """Every rank of a DDP run on an AMX machine makes the single-process choice for a small model."""
    small = torch.nn.Sequential(torch.nn.Linear(64, 64))
    choice = choose_precision("auto", accelerator="cpu", model=small, processes=2,
                              bf16_units=lambda: ["amx_bf16"], timings=_must_not_run)
    assert choice.precision == "32-true"


def test_a_set_precision_and_a_resumed_run_are_kept():
    assert choose_precision("bf16-mixed", accelerator="cpu", bf16_units=_must_not_run).precision == "bf16-mixed"
    kept = choose_precision("auto", accelerator="cpu", model=_Body(), earlier="bf16-mixed",
                            bf16_units=_must_not_run, timings=_must_not_run)
    assert kept.precision == "bf16-mixed" and "first segment" in kept.reason


def test_other_accelerators_train_in_float32():
    assert choose_precision("auto", accelerator="mps").precision == "32-true"


def test_the_calibration_times_real_layers_in_both_dtypes():
    measured = precision.calibrate({(128, 256): 2}, tokens=64)
    assert measured["fp32_s"] > 0 and measured["bf16_s"] > 0
    assert measured["speedup"] == pytest.approx(measured["fp32_s"] / measured["bf16_s"], rel=1e-2)
    assert measured["shapes"] == [[128, 256, 2]]


def test_the_shapes_of_a_peft_model_are_its_base_layers():
    from peft import LoraConfig, get_peft_model
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model, _ = load_tiny(TinyModelConfig())
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    shapes = linear_shapes(wrapped)
    assert shapes == {(64, 64): 4, (64, 32): 4, (64, 128): 4, (128, 64): 2}  # q/o, k/v, gate/up, down


def test_the_cpu_flags_are_read_when_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert precision.cpu_bf16_units() == ["avx512_bf16"]


@dataclass
class _NoSettings:
    pass


class _SigtermAtStep2:
    """Registers callback ``sigterm_at_2``: this process gets SIGTERM once step 2 is done (a preemption)."""

    @staticmethod
    def tuneforge_callbacks():
        import lightning.pytorch as pl

        class Sigterm(pl.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == 2:
                    os.kill(os.getpid(), signal.SIGTERM)

        return [tuneforge.CallbackSpec("sigterm_at_2", _NoSettings, build=lambda cfg: Sigterm())]


def test_a_run_trains_in_the_chosen_precision_and_its_resume_keeps_it(tmp_path, monkeypatch):
    """The tiny model made eligible, an AMX CPU and a 3x calibration: the trainer runs bf16-mixed, and
    metrics.json says so and why; preempted, then resumed on a CPU without bf16 units, it stays bf16-mixed."""
    import lightning.pytorch as pl

    from tuneforge.training.run import RunInterrupted

    monkeypatch.setattr(precision, "MIN_CALIBRATED_PARAMETERS", 0)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["amx_bf16"])
    monkeypatch.setattr(precision, "calibrate", _timed(3.0))
    seen = []
    original = pl.Trainer.fit

    def fit(trainer, *args, **kwargs):
        seen.append(str(trainer.precision))
        return original(trainer, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        run_tiny_fit(run_dir, plugins=[_SigtermAtStep2()],
                     overrides=["trainer.max_steps=4", "+callbacks=[sigterm_at_2]"])
    assert seen == ["bf16-mixed"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["segments"][-1]["precision"] == "bf16-mixed"

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])  # another machine: no bf16 units
    resumed = run_tiny_fit(run_dir, overrides=["trainer.max_steps=4", "resume=auto"])
    assert seen == ["bf16-mixed", "bf16-mixed"]
    assert resumed.metrics["precision"]["chosen"] == "bf16-mixed"
    assert "first segment" in resumed.metrics["precision"]["reason"]
    assert [s["precision"] for s in resumed.metrics["segments"]] == ["bf16-mixed", "bf16-mixed"]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["precision"]["requested"] == "auto"


def test_a_fresh_run_records_its_choice_and_why(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "MIN_CALIBRATED_PARAMETERS", 0)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["amx_bf16"])
    monkeypatch.setattr(precision, "calibrate", _timed(3.0))
    result = run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=1"])
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"]
    assert recorded["chosen"] == "bf16-mixed" and recorded["calibration"]["speedup"] == 3.0
    assert recorded["reason"].startswith("the CPU has amx_bf16 and autocast bfloat16 ran")
    assert result.metrics["segments"][-1]["precision"] == "bf16-mixed"


def test_an_unknown_precision_is_refused_in_one_line_naming_the_key_and_auto(tmp_path):
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer\.precision: must be one of auto, 32-true, .*got 'fp8'"):
        run_tiny_fit(tmp_path / "run", overrides=["trainer.precision=fp8"])
    assert not (tmp_path / "run" / "model").exists()


def test_peft_input_casts_are_skipped_only_under_autocast_and_change_no_number():
    """bfloat16 -> float32 -> bfloat16 is exact: the same loss and gradients with the casts off."""
    import torch

    from tuneforge.plugins import adapters
    from tuneforge.plugins.models import TinyModelConfig, load_tiny
    from tuneforge.training.precision import input_casts_under_autocast

    model = adapters.apply_lora(load_tiny(TinyModelConfig())[0], adapters.LoraAdapterConfig(lora_dropout=0.0))
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers
    batch = torch.randint(4, model.config.vocab_size, (2, 12))

    def loss_and_grads(skip):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if skip:
                with input_casts_under_autocast(model):
                    assert not any(layer.cast_input_dtype_enabled for layer in layers)
                    loss = model(input_ids=batch, labels=batch).loss
            else:
                loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, skipped = loss_and_grads(False), loss_and_grads(True)
    assert all(layer.cast_input_dtype_enabled for layer in layers)  # restored
    assert torch.equal(plain[0], skipped[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], skipped[1]))
    with input_casts_under_autocast(model):  # no autocast: nothing is switched
        assert all(layer.cast_input_dtype_enabled for layer in layers)


def test_the_plan_assumes_what_auto_will_choose(monkeypatch):
    """``tuneforge plan`` cannot calibrate, but it follows auto's rules: bf16-mixed on a GPU and on a CPU with
    bfloat16 units, float32 on a CPU without, and float32 over a 4-/8-bit base on the CPU (bitsandbytes
    computes those layers in model.compute_dtype), as choose_precision decides."""
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["amx_bf16"])
    assert precision.planned_precision("auto", "cpu") == "bf16-mixed"
    assert precision.planned_precision("auto", "cpu", quantized=True) == "32-true"
    assert precision.planned_precision("auto", "gpu", quantized=True) == "bf16-mixed"
    assert precision.planned_precision("bf16-true", "cpu", quantized=True) == "bf16-true"
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])
    assert precision.planned_precision("auto", "cpu") == "32-true"
