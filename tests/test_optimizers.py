"""Optimizers are plugins (``optimizer=<name>``): the built-ins train, ``adamw`` is the AdamW tuneforge
always used (bit for bit), 8-bit state survives the checkpoint format exactly, the schedules follow
``transformers.get_scheduler``, and the mistakes of users and plugin authors are one line.

(SIGKILL + resume with each optimizer: tests/test_resume.py.)"""

from __future__ import annotations

import functools
import math
import sys
from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

import tuneforge
from helpers import FIXTURES, train_losses
from tuneforge.commands.cli import main
from tuneforge.data import pad_batch
from tuneforge.errors import ConfigError
from tuneforge.host.components import Component
from tuneforge.host.schema import OptimConfig
from tuneforge.testing import tiny_model, toy_examples
from tuneforge.training.module import FineTuneModule
from tuneforge.training.optimization import build_optimizer, build_schedule, parameter_groups

BUILT_IN = ("adamw", "adamw_8bit", "paged_adamw_8bit", "lion_8bit", "adafactor", "sgd")
#: a learning rate each optimizer trains the tiny model with in a few steps (Lion: sign steps, lower)
LEARNING_RATES = {"lion_8bit": 3e-3, "sgd": 0.3}


@functools.lru_cache(maxsize=None)
def plugins():
    from tuneforge.host.compose import load_plugins

    return load_plugins([])


def component(name: str, **config) -> Component:
    spec = plugins()["optimizer"].get(name)
    return Component(spec, spec.config(**config))


def compose_run(*overrides):
    """The validated run of ``overrides`` (in-process, as ``tuneforge train`` validates it)."""
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose

    loaded = plugins()
    return run_components(compose(["model=tiny", *overrides]), loaded)


def fit(optimizer: Component, optim: OptimConfig, steps: int, module_class=FineTuneModule):
    """Train the whole tiny model (matrices and norms: both parameter groups) for ``steps`` optimizer steps
    on the toy examples, in a fixed order; the per-step losses and the final weights."""
    torch.manual_seed(0)
    model, tokenizer = tiny_model()
    examples = toy_examples(tokenizer)
    loader = torch.utils.data.DataLoader(examples, batch_size=2, shuffle=False,
                                         collate_fn=partial(pad_batch, pad_token_id=tokenizer.pad_token_id))
    plugin_loss = plugins()["loss"].get("cross_entropy")
    loss_fn = plugin_loss.build(plugin_loss.config(), None)
    losses = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    module = module_class(model, loss_fn, optim, optimizer=optimizer)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Losses()],
                         gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=loader)
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}, trainer


# --------------------------------------------------------------------------- adamw: today's results


def _old_lr_factor(step, *, kind, warmup, total, floor):
    """tuneforge's schedule before optimizers were plugins (copied from the commit before them)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class OldAdamWModule(FineTuneModule):
    """``configure_optimizers`` exactly as it was before the ``optimizer`` group (the reference)."""

    def configure_optimizers(self):
        cfg = self.optim_config
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)
        schedule = partial(_old_lr_factor, kind=cfg.scheduler, warmup=warmup, total=total, floor=cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_adamw_is_the_default_and_gives_the_old_adamw_bit_for_bit():
    run = compose_run()
    assert run.optimizer.name == "adamw" and run.config.optimizer.name == "adamw"
    optim = OptimConfig(lr=3e-3, weight_decay=0.1, betas=[0.8, 0.99], eps=1e-7, warmup_steps=2, min_lr_ratio=0.1)
    losses, weights, trainer = fit(run.optimizer, optim, steps=6)
    old_losses, old_weights, _ = fit(None, optim, steps=6, module_class=OldAdamWModule)
    assert losses == old_losses and losses[-1] < losses[0]
    assert weights.keys() == old_weights.keys()
    assert all(torch.equal(weights[name], old_weights[name]) for name in weights)
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and all(g["params"] for g in groups)
    assert type(trainer.optimizers[0]) is torch.optim.AdamW


# --------------------------------------------------------------------------- every built-in trains


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_built_in_optimizer_lowers_the_loss(name):
    config = {"min_8bit_size": 0} if name.endswith("8bit") else {}  # every state 8-bit, not only large ones
    optim = OptimConfig(lr=LEARNING_RATES.get(name, 1e-2), scheduler="constant", weight_decay=0.01)
    losses, _, trainer = fit(component(name, **config), optim, steps=8)
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses
    state = trainer.optimizers[0].state_dict()["state"]
    if name.endswith("8bit"):  # the moments are uint8 codes with their blockwise scales and maps
        quantized = state[0]["__bnb_optimizer_quant_state__"]
        assert quantized["state1"].dtype == torch.uint8 and "qmap1" in quantized and "absmax1" in quantized
    if name == "adafactor":  # factored: a row and a column vector for a matrix, no full-size moment
        rows = state[0]["exp_avg_sq_row"]
        assert rows.ndim == 1 and "exp_avg" not in state[0]


def test_the_8bit_state_round_trips_exactly_through_the_checkpoint_format(tmp_path):
    from tuneforge.training.checkpoint import read_checkpoint, write_checkpoint

    settings = OptimConfig(lr=1e-2, weight_decay=0.1)

    def make(seed_weights):
        weights = torch.nn.Parameter(seed_weights.clone())
        bias = torch.nn.Parameter(torch.ones(48))
        model = SimpleNamespace(parameters=lambda: iter([weights, bias]))
        return build_optimizer(component("adamw_8bit", min_8bit_size=0), parameter_groups(model, 0.1), settings), \
            weights, bias

    def step(optimizer, weights, bias, k):
        optimizer.zero_grad()
        ((weights * torch.sin(weights + k)).sum() + (bias ** 3).sum()).backward()
        optimizer.step()

    start = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    first, w1, b1 = make(start)
    for k in range(3):
        step(first, w1, b1, k)
    write_checkpoint({"optimizer_states": [first.state_dict()]}, tmp_path / "step")
    second, w2, b2 = make(w1.detach())
    with torch.no_grad():
        b2.copy_(b1)
    second.load_state_dict(read_checkpoint(tmp_path / "step")["optimizer_states"][0])
    for k in range(3, 6):
        step(first, w1, b1, k)
        step(second, w2, b2, k)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)


# --------------------------------------------------------------------------- schedules


def _lrs(scheduler: str, total: int = 20, **keys) -> list:
    settings = OptimConfig(lr=1.0, scheduler=scheduler, warmup_steps=keys.pop("warmup_steps", 2), **keys)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
    schedule = build_schedule(optimizer, settings, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_the_old_schedules_are_unchanged_and_the_new_ones_come_from_transformers():
    from transformers import get_scheduler

    for kind in ("constant", "linear", "cosine"):
        expected = [_old_lr_factor(s, kind=kind, warmup=2, total=20, floor=0.1) for s in range(20)]
        assert _lrs(kind, min_lr_ratio=0.1) == pytest.approx(expected, abs=1e-12), kind
    # transformers' warmups start at 0 (tuneforge's own at 1 / warmup_steps)
    restarts = _lrs("cosine_with_restarts", num_cycles=2)
    assert restarts[:3] == [0.0, 0.5, 1.0]
    assert restarts[11] == pytest.approx(1.0) and restarts[10] < 0.05  # the restart after half the decay steps
    polynomial = _lrs("polynomial", power=2.0, min_lr_ratio=0.1, total=12)
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_scheduler("polynomial", reference, num_warmup_steps=2, num_training_steps=12,
                        scheduler_specific_kwargs={"lr_end": 0.1, "power": 2.0})
    expected = []
    for _ in range(12):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        ref.step()
    assert polynomial == pytest.approx(expected) and polynomial[-1] > 0.1 and polynomial[6] < polynomial[3]
    inverse = _lrs("inverse_sqrt", warmup_steps=0, timescale=4)
    assert inverse[0] == 1.0 and inverse[12] == pytest.approx(1 / math.sqrt(4))  # lr / sqrt((step + 4) / 4)
    wsd = _lrs("warmup_stable_decay", decay_ratio=0.25, min_lr_ratio=0.1)
    assert wsd[1] < 1.0 and wsd[2:16] == [1.0] * 14  # 2 warmup, 13 stable, 5 decay steps (from 1.0 down)
    assert 0.1 < wsd[-1] < wsd[-3] < wsd[16] < 1.0


def test_a_schedule_that_cannot_fit_the_run_is_one_line():
    with pytest.raises(ConfigError, match=r"^optim.scheduler=warmup_stable_decay: 8 warmup \+ 5 decay steps "
                                          r"\(optim.decay_ratio=0.5\) exceed the run's 10 steps; lower"):
        _lrs("warmup_stable_decay", total=10, warmup_steps=8, decay_ratio=0.5)


# --------------------------------------------------------------------------- the user's mistakes: one line


@pytest.mark.parametrize("override, line", [
    # (the list goes on with lion_8bit, paged_adamw_8bit, sgd, and any optimizer a fixture plugin loaded earlier in
    # this process added)
    ("optimizer=adamw8bit", "unknown choice 'adamw8bit' for 'optimizer' (did you mean 'adamw_8bit'?); valid: "
                            "adafactor, adamw, adamw_8bit, "),
    ("optim.scheduler=cosine_restarts", "optim.scheduler: must be one of constant, linear, cosine, "
                                        "cosine_with_restarts"),
    ("optim.num_cycles=0", "optim.num_cycles: must be >= 1, got 0"),
    ("optim.decay_ratio=1.5", "optim.decay_ratio: must be"),
    ("optimizer.nesterov=true", "optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0"),
    ("optimizer.eps_square=0", "optimizer.eps_square: must be > 0, got 0"),
])
def test_bad_optimizer_settings_are_one_line_naming_the_key(override, line):
    extra = {"optimizer.nesterov=true": ["optimizer=sgd", "optimizer.momentum=0"],
             "optimizer.eps_square=0": ["optimizer=adafactor"]}.get(override, [])
    try:
        compose_run(*extra, override)
    except ConfigError as exc:
        message = str(exc)
    else:
        pytest.fail(f"{override} was accepted")
    assert len(message.splitlines()) == 1 and line in message, message


def test_an_8bit_optimizer_without_bitsandbytes_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed: import and find_spec fail
    for name in ("adamw_8bit", "paged_adamw_8bit", "lion_8bit"):
        with pytest.raises(ConfigError) as refused:
            compose_run(f"optimizer={name}")
        assert str(refused.value) == (f"optimizer: optimizer={name} needs bitsandbytes, which is not installed: "
                                      "pip install 'tuneforge[quantization]'")
    assert compose_run("optimizer=adafactor").optimizer.name == "adafactor"  # the others need no bitsandbytes


# --------------------------------------------------------------------------- third-party optimizers


@pytest.fixture
def optplug(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "optimizers"))
    monkeypatch.setenv("TUNEFORGE_DISABLE_PLUGINS", "badstate")


def _error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code != 0
    text = capsys.readouterr().err
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("tuneforge: error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


TINY_RUN = ["model=tiny", "trainer.max_steps=6", "trainer.enable_progress_bar=false", "threads=1",
            "baselines=[]", "loader.batch_size=4", "optim.scheduler=constant"]


def test_a_third_party_optimizer_is_selected_by_name_and_trains(optplug, tmp_path, capsys):
    main(["config", "groups"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["optimizer", "halfadam", "plugin", "'halfadam',", "distribution", "optplug", "0.1.0"] in rows
    assert ["optimizer", "adamw", "plugin", "'optimizers',", "distribution", "tuneforge", tuneforge.__version__] in rows
    main(["plugins"])
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "optplug 0.1.0" in listed["halfadam"] and listed["halfadam"].endswith("optimizer: halfadam")
    assert listed["optimizers"].endswith("optimizer: adafactor, adamw, adamw_8bit, lion_8bit, paged_adamw_8bit, sgd")
    main(["train", *TINY_RUN, "optimizer=halfadam", "optimizer.scale=0.5", "optim.lr=2e-2", f"run_dir={tmp_path}"])
    losses = train_losses(tmp_path)
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]) - 0.1, losses
    from omegaconf import OmegaConf

    saved = OmegaConf.load(tmp_path / "config.yaml").optimizer
    assert saved == {"name": "halfadam", "scale": 0.5}


def test_resuming_with_another_optimizer_is_refused_in_one_line(optplug, tmp_path, capsys):
    run = [*TINY_RUN, "trainer.max_steps=2", "evaluators=[]", f"run_dir={tmp_path}"]
    main(["train", *run, "optimizer=halfadam", "checkpoint.every_n_steps=1"])
    line = _error_line(capsys, ["train", *run, "trainer.max_steps=4", "optimizer=adamw"])
    assert f"{tmp_path} holds a different run: optimizer.amsgrad ('<unset>' -> False); optimizer.name ('halfadam' " \
           "-> 'adamw'); optimizer.scale (0.5 -> '<unset>')" in line
    assert line.endswith("or resume=never to overwrite it")


def test_a_build_that_returns_no_optimizer_is_one_line_naming_the_plugin(optplug, tmp_path, capsys):
    line = _error_line(capsys, ["train", *TINY_RUN, "evaluators=[]", "optimizer=groups_only", f"run_dir={tmp_path}"])
    assert line == ("tuneforge: error: plugin 'notoptim' (distribution 'optplug 0.1.0'): optimizer 'groups_only', "
                    "build returned list of 2; it must return a torch.optim.Optimizer over the parameter groups it was "
                    "given")


def test_a_spec_with_a_bad_field_is_a_type_error_at_registration(monkeypatch, capsys):
    with pytest.raises(TypeError, match=r"optimizer 'x': 'state_bytes_per_parameter' must be a number >= 0, got -1"):
        tuneforge.OptimizerSpec("x", OptimConfig, build=lambda groups, settings, config: None,
                                state_bytes_per_parameter=-1)
    with pytest.raises(TypeError, match="optimizer 'x'"):
        tuneforge.OptimizerSpec("x", OptimConfig)  # no build
    monkeypatch.syspath_prepend(str(FIXTURES / "optimizers"))
    monkeypatch.delenv("TUNEFORGE_DISABLE_PLUGINS", raising=False)
    line = _error_line(capsys, ["config", "groups"])
    assert line.startswith("tuneforge: error: plugin 'badstate' (distribution 'optplug 0.1.0'): registration hook "
                           "tuneforge_optimizers: TypeError: optimizer 'textstate': 'state_bytes_per_parameter' "
                           "must be a number >= 0, got '8 bytes'")


def test_a_checkpoint_from_before_the_optimizer_group_resumes_with_the_default():
    from tuneforge.training.checkpoint import identity_differences

    before = {"model.name": "tiny", "adapter.r": 8}  # the identity such a checkpoint recorded: no optimizer keys
    now = {**before, "optimizer.name": "adamw", "optimizer.amsgrad": False}
    assert identity_differences(before, now) == []
    assert identity_differences({**before, "optimizer.name": "adamw"}, {**before, "optimizer.name": "sgd"}) == [
        "optimizer.name ('adamw' -> 'sgd')"]
    assert identity_differences(before, {**now, "adapter.r": 4}) == ["adapter.r (8 -> 4)"]
