"""``tuneforge config`` and ``tuneforge train --help``: what can be configured, from the installed plugins.

    tuneforge config groups                  every group, its choices, and the plugin + distribution of each
    tuneforge config show adapter=lora       a choice's description and fields (type, default, doc)
    tuneforge config show trainer            a root group (trainer, optim, loader, ...), or `root` for the top keys
    tuneforge train --help [adapter=ia3]     groups with their choices + the fields of the selected choices

Groups are the component kinds (``model``, ``data``, ``adapter``, ``loss``,
``evaluators``, ``callbacks``: one choice per registered spec, plus YAML
presets in ``conf/<group>/``), the root config's sections (``trainer``,
``strategy``, ``optim``, ``loader``, ...) and ``experiment`` (whole-run YAML
presets).  Field docs come from the config dataclass docstrings
(:mod:`tuneforge.host.config_docs`, the one source for this, ``train --help``
and docs/plugins.md).

Nothing here imports Hydra or torch: the plugins are loaded (their entry-point
modules import cheaply) and the YAML presets are read as files, so each
command takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

from tuneforge.errors import ConfigError, did_you_mean
from tuneforge.host import config_docs

CONFIG_PACKAGE = "tuneforge.conf"
#: the root config file whose ``defaults`` list selects the default choices
ROOT_CONFIG = "config.yaml"


@dataclass(frozen=True)
class Choice:
    """One option of a group: a registered component, a schema node or a YAML preset."""

    group: str
    name: str
    #: the dataclass of its fields (a preset: the one of the choice it extends; None: no fields)
    config: Optional[type]
    description: str
    #: who provides it, e.g. ``plugin 'adapters', distribution tuneforge 0.2.0``
    provider: str
    plugin: str = ""
    distribution: str = ""
    #: a preset: the choice it extends and the values it sets
    base: Optional[str] = None
    preset: dict = field(default_factory=dict)
    #: a preset that also sets keys of other groups (a ``# @package _global_`` file, e.g.
    #: ``adapter=qlora`` sets ``model.quantization``): ``{dotted key: value}``
    also_sets: dict = field(default_factory=dict)
    #: an evaluator: the :class:`~tuneforge.MetricInfo` of the metrics it declares
    metrics: tuple = ()


@dataclass(frozen=True)
class Group:
    """A config group: its choices (empty for sections set key by key) and how it is selected."""

    name: str
    choices: dict
    #: ``one`` (group=choice), ``list`` (group=[a,b]), ``keys`` (no choices: set group.key=value)
    #: or ``global`` (+experiment=name)
    selection: str
    config: Optional[type] = None
    description: str = ""


# ---------------------------------------------------------------------------
# Collecting groups and choices
# ---------------------------------------------------------------------------


def _conf_files():
    from importlib.resources import files

    return files(CONFIG_PACKAGE)


def _read_yaml(resource) -> tuple[dict, str]:
    """``(content, leading comment text)`` of a YAML file shipped in tuneforge.conf."""
    import yaml

    text = resource.read_text(encoding="utf-8")
    comment = []
    for line in text.splitlines():
        stripped = line.lstrip("#").strip()
        if not line.startswith("#") or (not stripped and comment):
            break  # the description is the first paragraph of the leading comment
        if stripped and not stripped.startswith("@package"):
            comment.append(stripped)
    return yaml.safe_load(text) or {}, " ".join(" ".join(comment).split())


def _presets(group: str, config_dirs=()) -> dict:
    """``{name: (content, description, where)}`` of the YAML presets in ``conf/<group>/`` and in the user's
    ``config_dirs`` (``--config-dir``, ``hydra.searchpath``; a built-in name stays the built-in's, as in Hydra)."""
    from tuneforge.host.config_files import user_preset_files

    folder = _conf_files() / group
    out = {}
    if folder.is_dir():
        for resource in sorted(folder.iterdir(), key=lambda r: r.name):
            if resource.name.endswith(".yaml"):
                out[resource.name[:-5]] = (*_read_yaml(resource), f"conf/{group}/{resource.name}")
    for name, path in user_preset_files(group, config_dirs).items():
        out.setdefault(name, (*_read_yaml(path), str(path)))
    return out


def _preset_base(content: dict) -> Optional[str]:
    """The choice a preset extends: its first plain defaults entry (``- hf``; a global preset's
    ``- lora@adapter`` is ``lora``)."""
    for entry in content.get("defaults") or ():
        if isinstance(entry, str) and entry != "_self_" and "/" not in entry:
            return entry.split("@", 1)[0]
    return None


def _preset_values(group: str, content: dict) -> tuple[dict, dict]:
    """``(values of the group's own keys, {dotted key: value} set in other groups)`` of a preset.

    A preset in ``conf/<group>/`` sets its group's keys at its top level, unless it is a
    ``# @package _global_`` file that puts its base at ``@<group>`` (``- lora@adapter``): then its
    ``<group>:`` node holds them and its other top-level nodes set other groups' keys."""
    values = {k: v for k, v in content.items() if k != "defaults"}
    global_base = any(isinstance(entry, str) and entry.endswith(f"@{group}")
                      for entry in content.get("defaults") or ())
    if not global_base:
        return values, {}
    own = values.pop(group, None) or {}

    def flatten(value, prefix):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}").items()}
        return {prefix: value}

    return dict(own), {k: v for key, item in values.items() for k, v in flatten(item, str(key)).items()}


def default_choices() -> dict:
    """``{group: choice or [choices]}`` selected by the root config's ``defaults`` list."""
    content, _ = _read_yaml(_conf_files() / ROOT_CONFIG)
    selected: dict = {}
    for entry in content.get("defaults") or ():
        if isinstance(entry, dict):
            for group, choice in entry.items():
                selected[str(group)] = list(choice) if isinstance(choice, list) else str(choice)
    return selected


def collect_groups(plugins, config_dirs=()) -> dict:
    """Every config group with its choices, in the order users meet them (presets also from the user's
    ``config_dirs``)."""
    from tuneforge import __version__
    from tuneforge.host.schema import SCHEMA_CHOICES, TuneforgeConfig
    from tuneforge.specs import SELECTED_BY_SETTING, SPEC_KINDS

    own = f"tuneforge {__version__}"
    groups: dict = {}
    for spec_class, (group, _hook, multiple) in SPEC_KINDS.items():
        if spec_class in SELECTED_BY_SETTING:  # not a group: a component's setting selects one
            continue
        registry = plugins[group]
        choices = {}
        for spec in registry:
            origin = registry.origin(spec.name)
            distribution = f"{origin.distribution} {origin.version}".strip()
            choices[spec.name] = Choice(group, spec.name, spec.config,
                                        spec.description or config_docs.description(spec.config),
                                        f"plugin '{origin.name}', distribution {distribution}", origin.name, distribution,
                                        metrics=tuple(getattr(spec, "metrics", ()) or ()))
        _add_presets(groups, group, choices, own, config_dirs)
        groups[group] = Group(group, dict(sorted(choices.items())), "list" if multiple else "one")

    hints = typing.get_type_hints(TuneforgeConfig)
    for section in dataclasses.fields(TuneforgeConfig):
        cls = hints.get(section.name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        choices = {}
        if section.name in SCHEMA_CHOICES:
            name, node = SCHEMA_CHOICES[section.name]
            choices[name] = Choice(section.name, name, node, config_docs.description(node),
                                   f"tuneforge schema {node.__name__}", "", own)
        _add_presets(groups, section.name, choices, own, config_dirs)
        groups[section.name] = Group(section.name, dict(sorted(choices.items())), "one" if choices else "keys",
                                     cls, config_docs.description(cls))
    experiments = {name: Choice("experiment", name, None, description, _preset_provider(where, own),
                                "", own, preset=content)
                   for name, (content, description, where) in _presets("experiment", config_dirs).items()}
    groups["experiment"] = Group("experiment", experiments, "global", None,
                                 "whole-run presets (they set several groups and keys)")
    return groups


def _preset_provider(where: str, own: str) -> str:
    """Who provides a preset: a file of tuneforge's conf/ (its distribution), or one of the user's."""
    return f"preset {where}, distribution {own}" if where.startswith("conf/") else f"preset {where} (your config folder)"


def _add_presets(groups: dict, group: str, choices: dict, own: str, config_dirs=()) -> None:
    for name, (content, description, where) in _presets(group, config_dirs).items():
        base = _preset_base(content)
        values, also_sets = _preset_values(group, content)
        base_choice = choices.get(base)
        choices[name] = Choice(group, name, base_choice.config if base_choice else None,
                               description or (base_choice.description if base_choice else ""),
                               _preset_provider(where, own), "", own, base=base,
                               preset=values, also_sets=also_sets)


def _plugins_for(overrides: list):
    """The plugin manager with the plugin switches named in simple ``plugins.*=`` overrides, its config
    classes checked as ``train`` registers them (a class Hydra refuses is the same one-line error)."""
    from tuneforge.host.plugin_manager import PluginSelection, create_plugin_manager
    from tuneforge.host.schema import check_configs

    values = {}
    for override in overrides:
        key, _, value = override.partition("=")
        if key in ("plugins.disable", "plugins.enable", "plugins.autoload"):
            values[key.split(".")[1]] = value
    as_list = lambda text: [v.strip() for v in (text or "").strip("[]").split(",") if v.strip()]  # noqa: E731
    autoload = values.get("autoload")
    plugins = create_plugin_manager(PluginSelection.from_env(
        disable=as_list(values.get("disable")), enable=as_list(values.get("enable")),
        autoload=None if autoload is None else autoload.strip().lower() not in ("0", "false", "no", "off")))
    check_configs(plugins)
    return plugins


# ---------------------------------------------------------------------------
# Selections from the command line
# ---------------------------------------------------------------------------


def parse_selection(overrides: list, groups: dict) -> dict:
    """``{group: choice or [choices]}``: the defaults, replaced by ``group=choice`` overrides.

    Only plain selections are read (``adapter=ia3``, ``evaluators=[a,b]``,
    ``+experiment=name``); keys (``adapter.r=4``) and Hydra's other forms
    are left to ``tuneforge train``.  An unknown group choice is an error
    naming the valid ones.
    """
    selected = default_choices()
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+")
        if not sep or "." in key or key not in groups:
            continue
        group = groups[key]
        names = [v.strip() for v in value.strip("[]").split(",") if v.strip()] if group.selection == "list" \
            else [value.strip()]
        for name in names:
            _choice(group, name)  # raises for an unknown one
        selected[key] = names if group.selection == "list" else names[0]
    return selected


def _choice(group: Group, name: str) -> Choice:
    if name not in group.choices:
        valid = list(group.choices)
        if not valid:
            raise ConfigError(f"'{group.name}' has no choices; set its keys instead ({group.name}.<key>=value; "
                              f"tuneforge config show {group.name})")
        from tuneforge.host.plugin_manager import unknown_choice_note

        raise ConfigError(f"unknown choice '{name}' for '{group.name}'{did_you_mean(name, valid)}; "
                          f"valid: {', '.join(valid)}{unknown_choice_note(name, valid)}")
    return group.choices[name]


def _group(groups: dict, name: str) -> Group:
    if name not in groups:
        valid = [*groups, "root"]
        raise ConfigError(f"unknown config group '{name}'{did_you_mean(name, valid)}; valid: {', '.join(valid)}")
    return groups[name]


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def format_choice(choice: Choice, prefix: Optional[str] = None) -> str:
    """A choice's heading, provider, description and fields (with docs) as terminal text."""
    prefix = prefix or choice.group
    lines = [f"{choice.group}={choice.name}  [{choice.provider}]"]
    if choice.description:
        lines.append(f"  {choice.description}")
    lines += [f"  {line}" for line in metric_lines(choice.metrics)]
    if choice.base:
        own = (f"the defaults below include the values it sets ({', '.join(str(k) for k in choice.preset)})"
               if choice.preset else "it sets no values of its own")
        lines.append(f"  a preset of {choice.group}={choice.base}: {own}")
    if choice.also_sets:
        also = ", ".join(f"{key}={_shown(value)}" for key, value in choice.also_sets.items())
        lines.append(f"  it also sets: {also}")
    if choice.config is not None:  # a schema node's own `name` (strategy.name) is a real key
        schema = choice.provider.startswith("tuneforge schema") or choice.group in ("trainer", "strategy")
        cls = _with_defaults(choice.config, choice.preset) if choice.preset else choice.config
        lines.append(config_docs.format_fields(prefix, cls, () if schema else ("name",)))
    elif choice.group == "experiment":
        lines.append("  sets: " + ", ".join(str(k) for k in choice.preset if k != "defaults"))
    return "\n".join(lines)


def _shown(value) -> str:
    """A preset's value as on the command line (``true``, ``nf4``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def metric_lines(metrics) -> list:
    """One line per declared metric of an evaluator: name, direction, section, primary, description
    (``metric loss: lower is better, section held-out, primary; mean token loss``)."""
    lines = []
    for info in metrics:
        facts = ["higher is better" if info.higher_is_better else "lower is better", f"section {info.section}"]
        if info.primary:
            facts.append("primary")
        text = f"metric {info.name}: {', '.join(facts)}"
        lines.append(f"{text}; {info.description}" if info.description else text)
    return lines


def _with_defaults(cls: type, values: dict) -> type:
    """A subclass of the dataclass ``cls`` whose defaults are ``values`` (a preset's), for display."""
    hints = typing.get_type_hints(cls)
    fields = [(k, hints[k], field(default_factory=lambda v=v: v) if isinstance(v, (list, dict)) else field(default=v))
              for k, v in values.items() if k in hints]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,)) if fields else cls


def format_section(group: Group) -> str:
    """A root section without choices (``optim``, ``loader`` ...): description and fields."""
    lines = [f"{group.name}  [tuneforge schema {group.config.__name__}; set {group.name}.<key>=value]"]
    if group.description:
        lines.append(f"  {group.description}")
    lines.append(config_docs.format_fields(group.name, group.config, skip=()))
    return "\n".join(lines)


def format_root() -> str:
    """The root config's own keys (``seed``, ``resume``, ``run_dir``, ``threads``)."""
    from tuneforge.host.schema import COMPONENT_GROUPS, TuneforgeConfig

    hints = typing.get_type_hints(TuneforgeConfig)
    keep = [f for f in dataclasses.fields(TuneforgeConfig)
            if f.name not in COMPONENT_GROUPS
            and not (isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name]))]
    scalar = dataclasses.make_dataclass(  # the root's own keys: neither a section nor a component
        "RootKeys", [(f.name, hints[f.name], field(default=f.default)) for f in keep])
    scalar.__doc__ = TuneforgeConfig.__doc__
    return "root keys  [tuneforge schema TuneforgeConfig; set key=value]\n" + config_docs.format_fields("", scalar)


def format_groups(groups: dict) -> str:
    """The ``tuneforge config groups`` table: group, choice, plugin, distribution."""
    rows = [("group", "choice", "provided by")]
    for group in groups.values():
        if not group.choices:
            rows.append((group.name, "(no choices)", f"set {group.name}.<key>=value"))
        for choice in group.choices.values():
            rows.append((group.name, choice.name, choice.provider))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{g:<{widths[0]}}  {c:<{widths[1]}}  {p}".rstrip() for g, c, p in rows)


def _selection_marks(group: Group, selected) -> str:
    chosen = set(selected if isinstance(selected, list) else [selected] if selected else [])
    return ", ".join(("*" if name in chosen else "") + name for name in group.choices)


TRAIN_HELP = """\
usage: tuneforge train [group=choice ...] [key=value ...] [-m] [--cfg job] [--debug]

Fine-tune a model.  Arguments are Hydra overrides: group=choice selects a
component (adapter=ia3), key=value sets a field (adapter.target_modules=[q_proj]),
evaluators=[a,b] / callbacks=[a,b] / baselines=[a,b] / rewards=[a,b] select several, -m sweeps
(data.max_examples=25,50), --cfg job prints the composed config without running (as the run keeps it: a
list such as evaluators=[a] drops an experiment's other components).  Values with special
characters are quoted: 'key="a,b"' (docs/plugins.md, "Override values").
'tuneforge train --help group=choice ...' shows the fields of those choices;
'tuneforge config show <group>=<choice>' one choice; 'tuneforge config groups' who provides what.
"""


def train_help(args: list) -> str:
    """The text of ``tuneforge train --help [group=choice ...]``."""
    from tuneforge.host.config_files import config_dirs

    overrides = [a for a in args if not a.startswith("-")]
    plugins = _plugins_for(overrides)
    groups = collect_groups(plugins, config_dirs((), overrides))
    selected = parse_selection(overrides, groups)
    from tuneforge.commands.experiment_help import experiment_effect

    chosen_by_experiment, experiment_lines = experiment_effect(overrides)
    selected.update(chosen_by_experiment)
    width = max(len(name) for name in groups)
    how = {"list": " (list)", "global": " (+experiment=<name>: sets several groups and keys; --help +experiment=<name> lists them)",
           "one": "", "keys": ""}
    lines = [TRAIN_HELP, "config groups (* = selected):"]
    for group in groups.values():
        choices = _selection_marks(group, selected.get(group.name)) if group.choices else \
            f"(no choices: set {group.name}.<key>=value)"
        lines.append(f"  {group.name:<{width}}  {choices}{how[group.selection]}")
    if experiment_lines:
        experiment = next(o for o in overrides if o.lstrip("+").startswith("experiment="))
        lines += ["", f"set by {experiment} (defaults below are the choices' own):", *experiment_lines]
    lines += ["", "settings of the selected choices:", ""]
    for group in groups.values():
        if group.selection == "global":
            continue
        if not group.choices:
            lines += [format_section(group), ""]
            continue
        chosen = selected.get(group.name)
        for name in (chosen if isinstance(chosen, list) else [chosen] if chosen else []):
            prefix = f"{group.name}.{name}" if group.selection == "list" else group.name
            lines += [format_choice(group.choices[name], prefix), ""]
    lines.append(format_root())
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

CONFIG_USAGE = """\
usage: tuneforge config groups
       tuneforge config show <group>=<choice> | <group> | root  [...]

groups   every config group, its choices and the plugin (distribution) that provides each
show     a choice's description and its fields with type, default and doc, e.g.
           tuneforge config show adapter=lora     tuneforge config show evaluators=[exact_match,rouge]
           tuneforge config show trainer          tuneforge config show root
         a component group alone (adapter) shows its default choice.
"""


def show(args: list) -> str:
    """The text of ``tuneforge config show ...``."""
    if not args:
        raise ConfigError("config show needs <group>=<choice>, <group> or root, e.g. "
                          "'tuneforge config show adapter=lora'")
    from tuneforge.host.config_files import config_dirs

    plugins = _plugins_for(args)
    groups = collect_groups(plugins, config_dirs((), args))
    defaults = default_choices()
    parts = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if key == "hydra.searchpath":  # the user's config folders: read above
            continue
        if key == "root" and not sep:
            parts.append(format_root())
            continue
        group = _group(groups, key)
        if not sep:
            if not group.choices:
                parts.append(format_section(group))
                continue
            value = defaults.get(key) or next(iter(group.choices))
        names = [v.strip() for v in str(value).strip("[]").split(",") if v.strip()] \
            if group.selection == "list" or isinstance(value, list) else [value.strip()]
        if not names:
            raise ConfigError(f"'{arg}' names no choice; valid for '{key}': {', '.join(group.choices)}")
        for name in names:
            choice = _choice(group, name)
            prefix = f"{key}.{name}" if group.selection == "list" else key
            parts.append(format_choice(choice, prefix))
    return "\n\n".join(parts) + "\n"


def config_command(args: list) -> None:
    """``tuneforge config groups | show ...``."""
    if not args or args[0] in ("-h", "--help", "help"):
        print(CONFIG_USAGE, end="")
        return
    if args[0] == "groups":
        from tuneforge.host.config_files import config_dirs

        plugins = _plugins_for(args[1:])
        print(format_groups(collect_groups(plugins, config_dirs((), args[1:]))))
    elif args[0] == "show":
        print(show(args[1:]), end="")
    else:
        raise ConfigError(f"unknown config subcommand '{args[0]}'{did_you_mean(args[0], ['groups', 'show'])}; "
                          "valid: groups, show")
