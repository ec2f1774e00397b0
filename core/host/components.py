"""From a composed config to what a run uses: every value checked, every component's config typed.

:func:`validate` reports what is wrong with a composed config without changing
it; :func:`run_components` returns the checked run as one object,
:class:`RunConfig`: the typed settings (:class:`RunSettings`, one instance of
each root section's dataclass and the root values), the resolved config, and for each selected component
(``model``, ``data``, ``adapter``, ``loss``, ``optimizer``, every ``evaluators.<key>``,
``callbacks.<key>``, ``baselines.<key>`` and ``rewards.<key>``), its spec and an instance of exactly ``spec.config``
built from the config node (without the host's ``name`` key).  Those instances
are what the plugins' work functions receive.

The checks, all made before any model loads:

* the root sections (``trainer``, ``optim``, ``loader`` ...) and root values
  (``resume``, ``seed`` ...) are built as their dataclasses
  (:mod:`tuneforge.host.schema`), whose ``__post_init__`` checks the values;
* each component node names a registered component, has only that
  component's keys and becomes an instance of its config class, whose
  ``__post_init__`` may refuse values (:mod:`tuneforge.validation`);
* a loss that declares ``requires`` gets data of those kinds, when the
  dataset can tell (``DatasetSpec.example_kinds``);
* a loss that scores with rewards (``LossSpec.needs_rewards``) only with some selected
  (``rewards=[...]``);
* ``loader.packing=true`` only with a loss and an adapter whose specs say
  ``supports_packing``;
* a base the model source loads quantized (``ModelSourceSpec.base_quantization``)
  only with an adapter whose spec says ``trains_quantized_base``, and not with
  ``deepspeed*`` on the CPU;
* a loss that trains another head than a causal LM's (``LossSpec.model_head``)
  only with a model source that loads it, evaluators that score it and no
  prompting baselines;
* no plugin in use was blocked too late (in a config file).

Before the checks, ``~`` in path settings is expanded and relative paths are
made absolute (:mod:`tuneforge.host.paths`), so ``config.yaml`` and every typed
config hold absolute paths.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tuneforge.errors import ConfigError, PluginError, TuneforgeError, did_you_mean, first_line
from tuneforge.host.schema import (CheckpointConfig, EvidenceConfig, LoaderConfig, MemorisationConfig, OptimConfig,
                                   PluginsConfig, QualityConfig, StrategyConfig, TrainerConfig, UncertaintyConfig)
from tuneforge.validation import ConfigValueError

#: component groups with one selected component, and those with several (by key)
SINGLE_GROUPS = ("model", "data", "adapter", "loss", "optimizer")
MULTIPLE_GROUPS = ("evaluators", "callbacks", "loggers", "baselines", "rewards")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: the ``key`` path and a one-line ``message``.

    ``str(problem)`` is ``"<key>: <message>"``, or ``line`` when a message
    names the key itself.
    """

    key: str
    message: str
    line: Optional[str] = None

    def __str__(self) -> str:
        return self.line or (f"{self.key}: {self.message}" if self.key else self.message)


@dataclass(frozen=True)
class Component:
    """A selected component: its spec and its validated config (an instance of ``spec.config``)."""

    spec: Any
    config: Any

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class RunSettings:
    """The run's own settings, typed and checked: one instance of each root section's dataclass
    (:mod:`tuneforge.host.schema`) and the root values.  Every default lives in that dataclass."""

    trainer: TrainerConfig
    strategy: StrategyConfig
    optim: OptimConfig
    loader: LoaderConfig
    plugins: PluginsConfig
    quality: QualityConfig
    checkpoint: CheckpointConfig
    memorisation: MemorisationConfig
    uncertainty: UncertaintyConfig
    evidence: EvidenceConfig
    resume: str
    seed: int
    run_dir: Optional[str]
    threads: Optional[int]
    allow_changed_data: bool
    init_from: Optional[str] = None


@dataclass(frozen=True)
class RunConfig:
    """A validated run, built and checked once (:func:`run_components`): the typed settings and every
    selected component with its typed config.

    ``settings``: :class:`RunSettings` (``settings.trainer.max_steps``, ``settings.seed`` ...);
    ``model``, ``data``, ``adapter``, ``loss``, ``optimizer``: the selected :class:`Component` (its ``spec``
    and ``config``, an instance of ``spec.config``; ``optimizer`` is last and may be None only in a
    RunConfig built by hand, which then cannot train); ``evaluators``, ``callbacks``, ``loggers``,
    ``baselines`` and ``rewards`` map each config key to its component.  ``config`` is the resolved ``DictConfig`` the
    run was composed as (with the components' ``name`` keys), kept for what saves it whole
    (``config.yaml``, the loggers' copy, the checkpoint's identity).

    Lifecycle hooks receive it as ``run_config``.
    """

    config: Any
    model: Component
    data: Component
    adapter: Component
    loss: Component
    evaluators: dict
    callbacks: dict
    loggers: dict
    baselines: dict = dataclasses.field(default_factory=dict)
    settings: Optional[RunSettings] = None
    optimizer: Optional[Component] = None
    rewards: dict = dataclasses.field(default_factory=dict)


#: the name the host's modules used before the typed settings joined it
RunComponents = RunConfig


def validate(cfg, plugins) -> list:
    """Every :class:`Problem` of the composed config ``cfg`` (empty: it is valid); ``cfg`` is not changed."""
    return _check(cfg, plugins)[1]


def run_components(cfg, plugins) -> RunConfig:
    """The validated run of ``cfg``; a ``ConfigError`` names every problem, one per line."""
    components, problems = _check(cfg, plugins)
    if problems:
        raise ConfigError("\n".join(str(p) for p in problems))
    return components


def run_settings(cfg) -> RunSettings:
    """Only the typed settings of the composed config ``cfg`` (the root sections and values; no
    component is looked up); a ``ConfigError`` names every problem, one per line."""
    from omegaconf import OmegaConf

    resolved = copy.deepcopy(cfg)
    OmegaConf.resolve(resolved)
    problems: list = []
    settings = _settings(resolved, problems)
    if problems:
        raise ConfigError("\n".join(str(p) for p in problems))
    return settings


def _settings(resolved, problems: list) -> Optional[RunSettings]:
    """Each root section of ``resolved`` built as its dataclass, and the root values checked; None (and
    ``problems``) when one fails."""
    from omegaconf import OmegaConf

    from tuneforge.host.schema import ROOT_SECTIONS, ROOT_VALUES, TuneforgeConfig

    before = len(problems)
    sections = {section: _build(section, lambda: OmegaConf.to_object(resolved[section]), problems)
                for section in ROOT_SECTIONS}
    root = _build("", lambda: TuneforgeConfig(**{key: resolved[key] for key in ROOT_VALUES}), problems)
    if len(problems) > before:
        return None
    return RunSettings(**sections, **{key: getattr(root, key) for key in ROOT_VALUES})


def typed_config(spec, values, key: str) -> Any:
    """An instance of ``spec.config`` from the mapping ``values`` (a ``name`` key is ignored).

    ``key`` names the node in error messages; a ``ConfigError`` names every problem.
    """
    from omegaconf import OmegaConf

    if OmegaConf.is_config(values):
        values = OmegaConf.to_container(values, resolve=True)
    config, problems = _convert(spec, dict(values), key)
    if problems:
        raise ConfigError("\n".join(str(p) for p in problems))
    return config


def selected_component(registry, setting, key: str) -> tuple:
    """``(spec, config)`` of the component a setting selects in ``registry`` (e.g. a baseline's
    ``retriever``, see :func:`tuneforge.specs.selects`): ``setting`` is a name or a mapping with
    ``name`` and that component's keys.  A :class:`ConfigError` (one line per problem) names
    ``key`` when it selects nothing valid."""
    from omegaconf import OmegaConf

    from tuneforge.host.schema import named_config_class

    kind = registry.spec_class.kind
    if OmegaConf.is_config(setting):
        setting = OmegaConf.to_container(setting, resolve=True)
    values = {"name": setting} if isinstance(setting, str) else setting
    if not isinstance(values, dict) or not isinstance(values.get("name"), str) or not values["name"]:
        raise ConfigError(f"{key}: expected a {kind} name or a mapping with 'name' "
                          f"(valid names: {', '.join(registry.names())}), got {setting!r}")
    try:
        spec = registry.get(values["name"])
    except PluginError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    valid = [f.name for f in dataclasses.fields(named_config_class(spec))]
    unknown = [str(name) for name in values if name not in valid]
    if unknown:
        raise ConfigError(f"{key}: unknown key '{unknown[0]}' for {kind} '{spec.name}'"
                          f"{did_you_mean(unknown[0], valid)}; valid keys: {', '.join(valid)}")
    return spec, typed_config(spec, values, key)


# ---------------------------------------------------------------------------


def _check(cfg, plugins) -> tuple[Optional[RunConfig], list]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)  # unlike OmegaConf.resolve, names a failing key
        resolved = copy.deepcopy(cfg)
        OmegaConf.resolve(resolved)
    except OmegaConfBaseException as exc:
        return None, [_omegaconf_problem("", exc)]
    from tuneforge.host.paths import absolute_root_paths

    absolute_root_paths(resolved)  # ~ expanded, relative paths made absolute: once, here (host/paths.py)
    from tuneforge.host.config_checks import run_dir_data_problems, selected_components, unknown_key_problems

    problems: list = unknown_key_problems(resolved)  # +key=value adds keys Hydra does not check
    settings = _settings(resolved, problems)

    drop_deselected_settings(resolved, plugins)
    found: dict = {}
    for group in SINGLE_GROUPS:
        found[group] = _component(plugins, group, group, resolved.get(group), problems)
    for group in MULTIPLE_GROUPS:
        found[group] = {str(key): _component(plugins, group, f"{group}.{key}", node, problems)
                        for key, node in (resolved.get(group) or {}).items()}
    inside_data = run_dir_data_problems(settings.run_dir, selected_components(found)) if settings else []
    problems += inside_data  # (the run directory Hydra makes is checked by `tuneforge train` itself)
    if found["loss"] is not None and found["data"] is not None and not inside_data:  # data not read then
        problems += _kind_problems(plugins, found["loss"], found["data"])
    if found["loss"] is not None and found["loss"].spec.needs_rewards and not (resolved.get("rewards") or {}):
        problems.append(_no_rewards_problem(plugins, found["loss"]))
    if settings is not None and settings.loader.packing:
        problems += _packing_problems(plugins, found)
    if found["model"] is not None:
        problems += _quantization_problems(plugins, found, settings)
    if found["loss"] is not None:
        problems += _head_problems(plugins, found)
    late = [name for name in (resolved.plugins.disable or []) if name in plugins.infos]
    if late:
        problems.append(Problem("plugins.disable", f"{late} was set in a config file, after those plugins were "
                                "imported; block them on the command line or with TUNEFORGE_DISABLE_PLUGINS"))
    if problems:
        return None, problems
    return RunConfig(config=resolved, settings=settings, **found), []


def drop_deselected_settings(resolved, plugins) -> None:
    """Remove settings of list-group components that are not selected, with a warning.

    An experiment may set ``evaluators.perplexity.batch_size`` for a component it
    selects; when the command line then replaces the selection
    (``evaluators=[exact_match]``, ``baselines=[]``), those settings are left without a
    ``name``.  A key that names an installed component is such a leftover: it is
    dropped (and said, on stderr); any other key without a ``name`` stays an error
    (a typo such as ``evaluators.exact_macth.x=1``).
    """
    import logging

    from omegaconf import DictConfig, open_dict

    for group in MULTIPLE_GROUPS:
        node = resolved.get(group)
        if not isinstance(node, DictConfig):
            continue
        names = set(plugins[group].names())
        leftovers = [str(key) for key, entry in node.items()
                     if str(key) in names and not (isinstance(entry, DictConfig) and "name" in entry)]
        if not leftovers:
            continue
        with open_dict(node):
            for key in leftovers:
                del node[key]
        selected = ",".join(str(key) for key in node.keys())
        logging.getLogger("tuneforge").warning(
            "%s: settings for %s ignored: not selected (%s=[%s])", group,
            ", ".join(f"{group}.{key}" for key in leftovers), group, selected)


def _owner_of_settings(plugins, group: str, name: str, keys: list) -> Optional[str]:
    """The other component of ``group`` that has every one of ``keys``, when a node's ``name`` was
    changed by hand (``adapter.name=ia3`` over lora's settings); None when no other one has them all."""
    from tuneforge.host.schema import named_config_class

    for other in plugins[group].names():
        if other != name:
            fields = {f.name for f in dataclasses.fields(named_config_class(plugins[group].get(other)))}
            if set(keys) <= fields:
                return other
    return None


def _component(plugins, group: str, path: str, node, problems: list) -> Optional[Component]:
    """The component a node selects, with its typed config; None (and ``problems``) when it cannot be built.

    A node may carry keys of another component (``+adapter.key=value``
    overrides bypass Hydra's own check); those are reported here.
    """
    from omegaconf import DictConfig, OmegaConf

    from tuneforge.host.schema import named_config_class

    if not isinstance(node, DictConfig) or "name" not in node:
        problems.append(Problem(path, f"has no 'name'; select a component with {group}=<name>, valid: "
                                      f"{', '.join(plugins[group].names())} (a preset file of yours extends one: "
                                      f"'defaults: [<component>, _self_]' first)"))
        return None
    try:
        spec = plugins[group].get(node.name)
    except PluginError as exc:
        problems.append(Problem(f"{path}.name", str(exc)))
        return None
    valid = [f.name for f in dataclasses.fields(named_config_class(spec))]
    unknown = [str(key) for key in node.keys() if key not in valid]
    owner = _owner_of_settings(plugins, group, spec.name, [str(key) for key in node.keys()]) if unknown else None
    if owner is not None:
        choose = f"{group}={spec.name}" if path == group else f"{group}=[...,{spec.name}]"
        problems.append(Problem(f"{path}.name", "name changed", line=(
            f"{path}.name={spec.name} does not switch the {group}: the other settings are {owner}'s; "
            f"choose a component with {choose}, which brings its own settings")))
        return None
    settable = [key for key in valid if key != "name"]  # name is the choice: <group>=<name>
    for key in unknown:
        problems.append(Problem(f"{path}.{key}", "unknown config key", line=(
            f"unknown config key '{path}.{key}' for {group} '{spec.name}'{did_you_mean(key, settable)}; "
            f"valid keys: {', '.join(settable)}")))
    if unknown:
        return None
    from tuneforge.host.paths import absolute_component_paths

    absolute_component_paths(node, spec.config)
    config, more = _convert(spec, OmegaConf.to_container(node, resolve=True), path)
    problems += more
    if config is not None:
        more = _selection_problems(plugins, config, path)
        problems += more
        if more:
            return None
    return None if config is None else Component(spec, config)


def _selection_problems(plugins, config, path: str) -> list:
    """The fields of ``config`` that select another component by name (:func:`tuneforge.specs.selects`,
    e.g. a baseline's ``retriever``), checked against that kind's registry and config class."""
    problems = []
    for field in dataclasses.fields(config):
        group = field.metadata.get("tuneforge_selects")
        if group is None:
            continue
        key = f"{path}.{field.name}"
        if group not in plugins.registries:
            problems.append(Problem(key, f"selects a component kind '{group}' that no spec kind has; valid: "
                                         f"{', '.join(sorted(plugins.registries))} (a bug of the plugin)"))
            continue
        try:
            selected_component(plugins[group], getattr(config, field.name), key)
        except ConfigError as exc:
            problems += [Problem(key, "", line=line) for line in str(exc).splitlines()]
    return problems


def _convert(spec, values: dict, path: str) -> tuple[Any, list]:
    """``values`` (plain, resolved) merged over ``spec.config``'s defaults, as an instance of it."""
    from omegaconf import OmegaConf

    values = {key: value for key, value in values.items() if key != "name"}
    problems: list = []
    config = _build(path, lambda: OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(spec.config), values)),
                    problems, spec=spec)
    if config is not None and type(config) is not spec.config:  # pragma: no cover - omegaconf guarantees it
        raise TypeError(f"{path}: built {type(config).__name__}, expected {spec.config.__name__}")
    return config, problems


def _build(path: str, make: Callable[[], Any], problems: list, spec: Any = None) -> Any:
    """``make()``, or None with its failure added to ``problems`` as one-line :class:`Problem`\\ s.

    ``spec``: the component whose config class ``make`` builds; any other exception from its
    ``__post_init__`` is a plugin fault, named by :mod:`tuneforge.host.guard`."""
    from omegaconf.errors import OmegaConfBaseException

    from tuneforge.host.guard import is_own, origin_of, plugin_error

    try:
        return make()
    except ConfigValueError as exc:
        problems += [Problem(_join(path, field), message) for field, message in exc.problems]
    except OmegaConfBaseException as exc:
        problems.append(_omegaconf_problem(path, exc))
    except (TuneforgeError, ValueError, TypeError) as exc:  # a plugin's own check in __post_init__
        problems.append(Problem(path, first_line(exc)))
    except AssertionError as exc:  # a plain assert in __post_init__: a check too, read as a ValueError's
        problems.append(Problem(path, first_line(exc) if str(exc).strip() else _failed_assert(exc, spec)))
    except Exception as exc:
        origin = origin_of(spec) if spec is not None else None
        if origin is None or is_own(origin):
            raise
        line = str(plugin_error(origin, f"{spec.kind} '{spec.name}', config class {spec.config.__name__}", exc))
        problems.append(Problem(path, line, line=line))  # it names the component itself: no "<path>: " before it
    return None


def _failed_assert(exc: AssertionError, spec: Any) -> str:
    """What a config class's ``assert <check>`` without a message says: the check, as written."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    check = (frames[-1].line or f"the assert at {frames[-1].filename}:{frames[-1].lineno}") if frames else "an assert"
    where = f"config class {spec.config.__name__}" if spec is not None else "the config class"
    return f"{where} refused the values: {check} failed"


def _omegaconf_problem(path: str, exc) -> Problem:
    from omegaconf.errors import MissingMandatoryValue

    key = _join(path, str(getattr(exc, "full_key", "") or ""))
    if isinstance(exc, MissingMandatoryValue):
        return Problem(key, f"no value given (it is required); set {key}=<value>")
    cause = exc.__cause__  # a resolver's own error (``${pkg:...}`` naming a missing file)
    message = str(cause) if isinstance(cause, ValueError) and str(cause) else str(getattr(exc, "msg", "") or exc)
    return Problem(key, first_line(message))


def _kind_problems(plugins, loss: Component, data: Component) -> list:
    """The loss's ``requires`` against the example kinds the dataset says it will produce."""
    from tuneforge.host.guard import origin_of, plugin_code

    tell = data.spec.example_kinds
    if tell is None:
        return []
    try:
        with plugin_code(origin_of(data.spec), f"dataset '{data.name}', example_kinds"):
            kinds = tell(data.config)
    except (TuneforgeError, OSError, ValueError) as exc:
        if not loss.spec.requires:  # a loss that takes most kinds: loading the data reports the problem
            return []
        return [Problem("data", first_line(exc))]
    problem = loss_kind_problem(plugins, loss.name, loss.spec, kinds, f"data={data.name}")
    return [] if problem is None else [Problem("loss", problem)]


def loss_kind_problem(plugins, loss_name: str, loss_spec, kinds, source: str) -> Optional[str]:
    """Why loss ``loss_name`` cannot train on examples of ``kinds`` (from ``source``, e.g. ``data=jsonl``), or
    None.  A loss with ``requires`` takes only those kinds; any loss takes the other kinds, except those of
    :data:`tuneforge.data.columns.KINDS_NEEDING_THEIR_LOSS`, which need a loss that names them."""
    from tuneforge.data.columns import KINDS_NEEDING_THEIR_LOSS

    if kinds is None:
        return None
    requires = tuple(loss_spec.requires)
    if requires:
        other = sorted(set(kinds) - set(requires))
        if not other:
            return None
        wanted = " or ".join(requires)
        return (f"{loss_name} trains on {wanted} examples, but {source} gives {', '.join(other)} examples; use "
                f"{wanted} data or another loss")
    special = sorted(kind for kind in set(kinds) if kind in KINDS_NEEDING_THEIR_LOSS)
    if not special:
        return None
    kind = special[0]
    able = [name for name in plugins["loss"].names() if kind in plugins["loss"].get(name).requires]
    use = f"use loss={' or loss='.join(able)}" if able else "no installed loss trains on it"
    return (f"loss={loss_name} cannot train on the {kind} examples {source} gives: "
            f"{KINDS_NEEDING_THEIR_LOSS[kind]}; {use}")


def _no_rewards_problem(plugins, loss: Component) -> Problem:
    """A loss that trains on the run's rewards, in a run that selects none."""
    names = plugins["rewards"].names()
    return Problem("rewards", "", line=(
        f"loss={loss.name} trains on rewards, but the run selects none; select some with rewards=[<name>,...] "
        f"and their keys, e.g. 'rewards=[regex]' rewards.regex.pattern=<pattern> (installed: "
        f"{', '.join(names) or 'none'})"))


def _packing_problems(plugins, found: dict) -> list:
    """``loader.packing=true`` needs a loss and an adapter that take packed batches."""
    problems = []
    for group in ("loss", "adapter"):
        component = found[group]
        if component is None or component.spec.supports_packing:
            continue
        hint = " (preference losses compare whole sequences)" if group == "loss" else ""
        supported = [name for name in plugins[group].names() if plugins[group].get(name).supports_packing]
        problems.append(Problem("loader.packing", "", line=(
            f"loader.packing=true does not work with {group}={component.name}{hint}; set loader.packing=false, "
            f"or use a {group} that supports packing: {', '.join(supported)}")))
    return problems


def _head_problems(plugins, found: dict) -> list:
    """A loss that trains another head than a causal LM's (``LossSpec.model_head``) needs a model source
    that loads it, evaluators that score such a model, and no prompting baselines (they prompt a causal LM)."""
    from tuneforge.specs import CAUSAL_LM

    loss = found["loss"]
    head = loss.spec.model_head
    if head == CAUSAL_LM:
        return []
    trains = f"loss={loss.name} trains a {head} model"
    problems = []
    model = found["model"]
    if model is not None and head not in model.spec.heads:
        able = [name for name in plugins["model"].names() if head in plugins["model"].get(name).heads]
        problems.append(Problem("model", "", line=(
            f"model={model.name} cannot load a {head} model (it loads: {', '.join(model.spec.heads)}), but "
            f"{trains}; use a model source that can ({', '.join(able) or 'none is installed'})")))
    unable = [name for name, c in (found.get("evaluators") or {}).items() if c is not None
              and head not in c.spec.model_heads]
    if unable:
        able = [name for name in plugins["evaluators"].names() if head in plugins["evaluators"].get(name).model_heads]
        problems.append(Problem("evaluators", "", line=(
            f"evaluators=[{','.join(unable)}] cannot score a {head} model, but {trains}; set "
            f"'evaluators=[{','.join(able)}]'")))
    prompting = [name for name, c in (found.get("baselines") or {}).items() if c is None or c.spec.answer is None]
    if prompting:  # a baseline with `answer` uses no model
        problems.append(Problem("baselines", "", line=(
            f"baselines=[{','.join(prompting)}] prompt the base model as a causal LM, but {trains}; "
            "set 'baselines=[]'")))
    return problems


def base_quantization(model: Component) -> Optional[str]:
    """How the selected model source will quantize the base weights (``"nf4"``, ``"int8"`` ...; its
    spec's ``base_quantization``), or None for a full-precision base (or a source that does not say)."""
    from tuneforge.host.guard import spec_call

    tell = model.spec.base_quantization
    if tell is None:
        return None
    return spec_call(model.spec, "base_quantization", tell, model.config) or None


def _quantization_problems(plugins, found: dict, settings: Optional[RunSettings]) -> list:
    """A quantized base needs an adapter that trains over it, and a strategy that can run it."""
    try:
        quantization = base_quantization(found["model"])
    except (TuneforgeError, ValueError) as exc:
        return [Problem("model", first_line(exc))]
    if quantization is None:
        return []
    model, adapter = found["model"], found["adapter"]
    base = f"the {quantization}-quantized base that model={model.name} loads"
    problems = []
    if adapter is not None and not adapter.spec.trains_quantized_base:
        able = [name for name in plugins["adapter"].names() if plugins["adapter"].get(name).trains_quantized_base]
        problems.append(Problem("adapter", "", line=(
            f"adapter={adapter.name} cannot train {base}: it trains the base weights themselves, and quantized "
            f"weights cannot train; use an adapter that trains over a quantized base "
            f"({', '.join(able) or 'none is installed'}), or load the base unquantized")))
    if settings is None:
        return problems
    # (strategy=fsdp shards a quantized base too: tests/test_fsdp.py; DeepSpeed needs CUDA)
    strategy, accelerator = str(settings.strategy.name), str(settings.trainer.accelerator)
    if strategy.startswith("deepspeed") and accelerator == "cpu":
        problems.append(Problem("strategy", "", line=(
            f"strategy={strategy} with trainer.accelerator=cpu cannot train {base}: DeepSpeed runs on CUDA "
            "GPUs only; on the CPU use strategy=ddp")))
    return problems


def _join(path: str, key: str) -> str:
    if not key or key == path or key.startswith(path + "."):
        return key or path
    return f"{path}.{key}" if path else key


