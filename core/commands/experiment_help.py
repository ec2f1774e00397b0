"""What ``+experiment=<name>`` selects and sets, for ``tuneforge train --help +experiment=<name>``.

An experiment is a ``# @package _global_`` file that picks components and sets keys of any group, so its
choices and values cannot be read from the override alone: the config is composed with and without the
experiment, and the difference is what the experiment does.
"""

from __future__ import annotations

from typing import Sequence


def _is_experiment(override: str) -> bool:
    return override.lstrip("+~").split("=", 1)[0].strip() == "experiment"


def experiment_effect(overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """``({group: choice or [choices]} the composed config selects, lines "key = value  (default value)")``
    when ``overrides`` hold ``+experiment=<name>``; ``({}, [])`` otherwise (Hydra is imported only then)."""
    experiments = [o for o in overrides if _is_experiment(o)]
    if not experiments:
        return {}, []
    from omegaconf import DictConfig, OmegaConf

    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.host.components import MULTIPLE_GROUPS, SINGLE_GROUPS
    from tuneforge.training.seed_runs import flat_settings

    load_plugins(overrides)  # their config classes, as train registers them
    files: dict = {}  # the file chosen in each group: a user's preset, not the component it extends
    composed = compose(list(overrides), choices=files)
    selected: dict = {}
    for group in (*SINGLE_GROUPS, *MULTIPLE_GROUPS):
        node = composed.get(group)
        if isinstance(node, DictConfig) and group in SINGLE_GROUPS and "name" in node:
            selected[group] = str(files.get(group) or node.name)
        elif isinstance(node, DictConfig) and group in MULTIPLE_GROUPS:
            selected[group] = [str(key) for key in node.keys()]
    # the same choices without the experiment: what is left is what it sets beyond choosing
    choices = [f"{group}=[{','.join(value)}]" if isinstance(value, list) else f"{group}={value}"
               for group, value in selected.items()]
    plain = compose([*choices, *(o for o in overrides if not _is_experiment(o))])
    with_it = flat_settings(OmegaConf.to_container(composed, resolve=False))
    without = flat_settings(OmegaConf.to_container(plain, resolve=False))
    lines = [f"  {key} = {value!r}  (default {without[key]!r})" if key in without else f"  {key} = {value!r}"
             for key, value in with_it.items() if without.get(key, object()) != value]
    return selected, lines
