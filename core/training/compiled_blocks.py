"""``trainer.compile=true``: the model's repeated blocks (its decoder layers) run through
:func:`torch.compile` in the training loss (regional compilation; calls without gradients stay eager).

Compiling the whole model traces transformers' wrappers around it (output capturing, masks, the
cache), which break the graph and recompile; compiling the parts of each repeated block (its
attention, MLP and norms, :func:`compiled_parts`) gives one graph per kind of part that all blocks
share (the blocks differ only in their weights, which the compiled code takes as inputs), so the
compile time is that of one block, not of the model.  On the CPU the compiled code fuses what eager
runs one operation at a time (RMSNorm, rotary embeddings, SiLU times the up
projection, the casts of ``bf16-mixed``): about a fifth of a packed SmolLM2 step, after 10-45 s of
compiling (docs/performance.md, *Compiled layers*).

* :func:`choose_compile` decides, for ``trainer.compile`` and a loaded model, which blocks compile,
  and refuses what cannot work (torch < 2.5, no repeated blocks, a prefix adapter, no C++ compiler
  for the CPU);
* :class:`BlockCompiler` holds each part's compiled ``forward`` (made on first use);
* :func:`compiled_blocks` is the context of one loss call (:meth:`FineTuneModule._loss
  <tuneforge.training.module.FineTuneModule._loss>`): the parts' ``forward`` is the compiled one and
  the model's key/value cache is off; leaving it restores both, also after an error.  Generation in
  the evaluators, merging and saving never see the compiled code.

Only ``forward`` is compiled, not the module call around it: hooks on the blocks and their parts
(FSDP2's gathers, transformers' output capturing) keep running eagerly outside the compiled code.
The cache is off because each layer's cache update takes its layer index, which the compiled code
would guard on, compiling every layer again (torch stops at 8 and runs the rest eagerly).
"""

from __future__ import annotations

import contextlib
import logging
import types
from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["BlockCompiler", "CompileChoice", "choose_compile", "choose_run_compile", "compiled_blocks"]

log = logging.getLogger("tuneforge")


@dataclass
class CompileChoice:
    """What ``trainer.compile`` became for a run: ``enabled``, the compiled ``blocks`` (their count and
    class) and ``reason`` (one sentence for the log and ``metrics.json``)."""

    requested: bool
    enabled: bool
    reason: str
    blocks: list = field(default_factory=list, repr=False)

    def record(self) -> dict:
        """The ``metrics.json`` ``compile`` section."""
        names = sorted({type(block).__name__ for block in self.blocks})
        return {"requested": self.requested, "enabled": self.enabled, "reason": self.reason,
                "blocks": len(self.blocks), "block_classes": names}


def choose_compile(requested: bool, model: torch.nn.Module, accelerator: str = "cpu") -> CompileChoice:
    """:class:`CompileChoice` for ``trainer.compile=requested`` on ``model``; raises ``ConfigError`` with
    what would be valid when ``requested`` cannot be done."""
    from tuneforge.errors import ConfigError

    if not requested:
        return CompileChoice(False, False, "trainer.compile is false")
    if not _torch_shares_part_graphs():
        raise ConfigError(
            f"trainer.compile=true needs torch >= 2.5 (this is {torch.__version__}): before it, torch.compile "
            "compiled every layer's parts separately, past its limit of 8, and ran the rest uncompiled; valid: "
            "trainer.compile=false, or torch >= 2.5")
    from tuneforge.training.fsdp import decoder_layers, unsharded_class_name

    blocks = decoder_layers(model)
    if not blocks:
        raise ConfigError(
            f"trainer.compile=true: the model ({type(model).__name__}) names no repeated blocks to compile "
            "(a transformers model lists its decoder layer class in _no_split_modules); valid: "
            "trainer.compile=false, or a transformers causal LM")
    if _uses_prefix_adapter(model):
        raise ConfigError(
            "trainer.compile=true with adapter=prefix: the prefix reaches every layer through the key/value "
            "cache, whose per-layer index makes torch.compile compile each layer again; valid: "
            "trainer.compile=false, or adapter=lora/ia3/prompt/full")
    if accelerator == "cpu":
        problem = _cpu_compiler_problem()
        if problem:
            raise ConfigError(f"trainer.compile=true on the CPU: {problem}; install g++ (Debian/Ubuntu: "
                              "apt install g++), or set trainer.compile=false")
    count, name = len(blocks), unsharded_class_name(blocks[0])
    return CompileChoice(True, True, f"{count} {name} block(s) compiled with torch.compile", blocks)


def _torch_shares_part_graphs() -> bool:
    """Whether torch.compile treats a module passed to the compiled function as its weights (torch >= 2.5,
    ``inline_inbuilt_nn_modules``), so the parts of all layers share one graph."""
    from tuneforge.training.precision import torch_at_least

    return torch_at_least(2, 5)


def _uses_prefix_adapter(model) -> bool:
    """Whether ``model`` is a peft model whose active adapter is prefix tuning."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return False
    active = configs.get(getattr(model, "active_adapter", None))
    kind = getattr(active, "peft_type", None)
    return str(getattr(kind, "value", kind)) == "PREFIX_TUNING"


def _cpu_compiler_problem() -> Optional[str]:
    """``None`` when torch's inductor finds the C++ compiler it builds CPU kernels with, else what is
    missing (it looks for ``torch._inductor.config.cpp.cxx``, ``g++`` by default)."""
    try:
        from torch._inductor import cpp_builder
    except ImportError as exc:  # pragma: no cover - inductor ships with torch >= 2.0
        return f"torch's inductor cannot be imported ({exc})"
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # inductor's InvalidCxxCompiler, or an older torch's other error
        return f"torch's inductor found no C++ compiler ({type(exc).__name__}: {str(exc).strip()[:200]})"
    return None


class BlockCompiler:
    """The compiled ``forward`` of the parts of ``blocks`` (:func:`compiled_parts`): one
    ``torch.compile`` of each part class's ``forward`` (:meth:`forward_of`), made on first use.

    The part is an argument of the compiled function, so all parts of one class share its compiled
    code: only the first compiles (plus once for an input without gradient, as the first block's).  It
    is compiled for any batch size and length (``dynamic=True``): padded batches change length at
    every step and compile once for all lengths (measured: no step compiled again over 14 padded
    SmolLM2 batches); a batch of one row still compiles once more (torch specialises sizes 0 and 1).

    Only calls with gradients run compiled: validation, a reference model's forward and the
    generation of ``loss=grpo`` run under ``torch.no_grad`` inside the loss call and stay eager, so
    they compile nothing (generation's one-token steps and key/value cache would compile many more
    graphs)."""

    def __init__(self, blocks: list):
        self.blocks = list(blocks)
        self.parts = [part for block in self.blocks for part in compiled_parts(block)]
        self._compiled: dict = {}

    def forward_of(self, part):
        """``part``'s ``forward`` while compiled: a method bound to ``part`` (so a copy of the model made
        inside the loss call, as a frozen reference model, runs its own weights)."""
        cls = type(part)
        if cls not in self._compiled:
            self._compiled[cls] = _grad_only(torch.compile(cls.forward, dynamic=True), cls.forward)
        return types.MethodType(self._compiled[cls], part)


def _grad_only(compiled, eager):
    """A function that runs ``compiled`` where gradients are on, ``eager`` elsewhere."""

    def forward(self, *args, **kwargs):
        return (compiled if torch.is_grad_enabled() else eager)(self, *args, **kwargs)

    return forward


def compiled_parts(block: torch.nn.Module) -> list:
    """What of ``block`` compiles: its direct children that hold weights (attention, MLP, norms), or
    ``block`` itself when it has none.

    A decoder layer's own call reaches its attention through the attention module's hooks
    (transformers' output capturing reads a context variable torch.compile cannot trace), which would
    split a compiled layer into pieces compiled again for each caller; compiling the children keeps
    every hook outside the compiled code and leaves only the residual additions eager."""
    children = [child for child in block.children() if next(child.parameters(), None) is not None]
    return children or [block]


@contextlib.contextmanager
def compiled_blocks(model: torch.nn.Module, compiler: Optional[BlockCompiler]):
    """A context for one loss call of ``model``: with a ``compiler``, its blocks run their compiled
    ``forward`` and the key/value cache is off (see the module docstring); without one, nothing
    changes."""
    if compiler is None:
        yield
        return
    configs = _cache_configs(model)
    earlier_cache = [config.use_cache for config in configs]
    earlier_forward = [part.__dict__.get("forward") for part in compiler.parts]
    try:
        for config in configs:
            config.use_cache = False
        for part in compiler.parts:
            part.forward = compiler.forward_of(part)
        yield
    finally:
        for config, value in zip(configs, earlier_cache):
            config.use_cache = value
        for part, forward in zip(compiler.parts, earlier_forward):
            if forward is None:
                part.__dict__.pop("forward", None)
            else:
                part.forward = forward


def _cache_configs(model) -> list:
    """The distinct model configs inside ``model`` that have a ``use_cache`` setting (its modules found
    once per model: this runs twice a training step, for the forward and the backward pass)."""
    from tuneforge.training.precision import modules_where

    found = {id(module.config): module.config for module in modules_where(model, _has_cache_setting)}
    return list(found.values())


def _has_cache_setting(module) -> bool:
    return hasattr(getattr(module, "config", None), "use_cache")


def choose_run_compile(state) -> CompileChoice:
    """``trainer.compile`` for a run (``state``: its :class:`~tuneforge.training.run_state.RunState`, with
    the model loaded): decided as soon as the model is (so a refusal comes before the data loads and the
    base model is evaluated), logged, and recorded in ``metrics.json`` ``compile``; ``fit`` hands the
    compiled blocks to the Lightning module, whose loss calls then use them."""
    settings, context = state.settings, state.context
    choice = choose_compile(bool(settings.trainer.compile), state.model,
                            accelerator=context.device.split(":")[0])
    if choice.enabled:
        log.info("trainer.compile=true: %s; the first steps include compiling", choice.reason)
    state.metrics["compile"] = choice.record()
    return choice
