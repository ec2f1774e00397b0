"""Plugin discovery through entry points: errors, collisions, blocking, validation."""

import sys

import pytest

from helpers import FIXTURES, install_fake_distribution
from tuneforge.host.compose import plugin_selection
from tuneforge.errors import PluginError
from tuneforge.host.plugin_manager import PluginSelection, create_plugin_manager

BUILTINS = {"models", "datasets", "adapters", "losses", "evaluators"}


def test_builtins_load_through_entry_points():
    plugins = create_plugin_manager(PluginSelection())
    assert BUILTINS <= set(plugins.infos)
    assert {info.distribution for name, info in plugins.infos.items() if name in BUILTINS} == {"tuneforge"}
    assert {"lora", "full"} <= set(plugins["adapter"].names())
    assert {"hf", "tiny"} <= set(plugins["model"].names())
    assert plugins["data"].origin("jsonl").name == "datasets"


def test_third_party_entry_point_contributes_components(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "good"))
    plugins = create_plugin_manager(PluginSelection())
    assert plugins.infos["myplug"].distribution == "myplug"
    assert plugins.infos["myplug"].version == "0.1.0"
    assert plugins.contributions("myplug") == {"data": ["my_data"], "adapter": ["my_adapter"]}


def test_plugin_failing_on_import_is_named(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "broken"))
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    message = str(info.value)
    assert "plugin 'badplug'" in message
    assert "badplug 0.2.0" in message
    assert "RuntimeError: badplug cannot find its model zoo" in message
    assert "TUNEFORGE_DISABLE_PLUGINS=badplug" in message


def test_two_components_with_one_name_collide(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "collide"))
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    message = str(info.value)
    assert "two adapters are named 'lora'" in message
    assert "distribution 'tuneforge'" in message and "distribution 'dupplug'" in message
    # the way out blocks the third-party plugin, never the built-in one (that would drop every adapter)
    assert message.endswith("rename the adapter of plugin 'dupplug' or block that plugin with "
                            "TUNEFORGE_DISABLE_PLUGINS=dupplug")


def test_blocked_plugin_is_never_imported(monkeypatch, tmp_path):
    marker = tmp_path / "imported"
    monkeypatch.setenv("BLOCKME_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(FIXTURES / "blockable"))
    monkeypatch.setenv("TUNEFORGE_DISABLE_PLUGINS", "blockme, other")
    plugins = create_plugin_manager(PluginSelection.from_env())
    assert "blockme" not in plugins.infos and plugins.blocked == ["blockme"]
    assert not marker.exists() and "blockme.plugin" not in sys.modules
    # a broken plugin can be blocked too, through the config key on the command line
    monkeypatch.delenv("TUNEFORGE_DISABLE_PLUGINS")
    monkeypatch.syspath_prepend(str(FIXTURES / "broken"))
    plugins = create_plugin_manager(plugin_selection(["plugins.disable=[badplug,blockme]"]))
    assert sorted(plugins.blocked) == ["badplug", "blockme"]
    assert not marker.exists()


def test_autoload_off_loads_only_builtins_and_enabled(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "good"))
    monkeypatch.setenv("TUNEFORGE_PLUGINS_AUTOLOAD", "0")
    assert "myplug" not in create_plugin_manager(PluginSelection.from_env()).infos
    enabled = create_plugin_manager(plugin_selection(["plugins.enable=[myplug]"]))
    assert "myplug" in enabled.infos and BUILTINS <= set(enabled.infos)


def test_misspelt_hook_is_an_error_naming_the_plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "typo"))
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    assert "typoplug" in str(info.value) and "tuneforge_adaptors" in str(info.value)
    assert "tuneforge_adapters" in str(info.value)  # the valid hooks are listed


def test_unknown_hook_argument_is_an_error_naming_the_plugin():
    class WrongArgs:
        __name__ = "wrong_args"

        def tuneforge_run_start(self, config, run_directory):
            pass

    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection(), extra_plugins=[WrongArgs()])
    assert "wrong_args" in str(info.value) and "run_directory" in str(info.value)
    assert "TUNEFORGE_DISABLE_PLUGINS" not in str(info.value)  # a block list does not apply to a passed plugin




LOSS = ("@dataclass\nclass C:\n    beta: float = 0.0\n"
        "SPEC = tuneforge.LossSpec('my_ce', C, build=lambda config, context: None)\n")
HOOK_ARGS = "valid arguments of tuneforge_run_start: config, run_dir, context, run_config (any subset, by these names)"


def test_a_hook_argument_the_hook_does_not_pass_is_one_line_with_the_valid_arguments(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "argplug", "def tuneforge_run_start(cfg, run_dir, verbose):\n    pass\n")
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    assert str(info.value) == (
        "plugin 'argplug' (distribution 'argplug 0.1.0'): hook tuneforge_run_start takes arguments 'cfg' (did you "
        f"mean 'config'?), 'verbose', which the hook does not pass; {HOOK_ARGS}; block it with "
        "TUNEFORGE_DISABLE_PLUGINS=argplug")
    plugins = create_plugin_manager(PluginSelection(), tolerate_broken=True)
    assert plugins.broken["argplug"] == str(info.value) and "argplug" not in plugins.infos


@pytest.mark.parametrize("returned, what", [
    ("None", "None"), ("SPEC", "a single LossSpec (not in a list)"), ("{'my_ce': SPEC}", "dict"),
    ("'my_ce'", "str"), ("[{'name': 'my_ce'}]", "a list holding dict"),
])
def test_a_registration_hook_must_return_a_list_of_specs(tmp_path, monkeypatch, returned, what):
    install_fake_distribution(tmp_path, monkeypatch, "retplug", LOSS + f"def tuneforge_losses():\n    return {returned}\n")
    expected = (f"plugin 'retplug' (distribution 'retplug 0.1.0'): registration hook tuneforge_losses returned "
                f"{what}; it must return a list of tuneforge.LossSpec (an empty list for none); block it with "
                "TUNEFORGE_DISABLE_PLUGINS=retplug")
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    assert str(info.value) == expected
    plugins = create_plugin_manager(PluginSelection(), tolerate_broken=True)  # `tuneforge plugins`: listed, broken
    assert plugins.broken == {"retplug": expected} and "cross_entropy" in plugins["loss"].names()


@pytest.mark.parametrize("returned", ["[]", "(SPEC,)", "(s for s in [SPEC])"])
def test_a_registration_hook_may_return_any_iterable_of_specs(tmp_path, monkeypatch, returned):
    install_fake_distribution(tmp_path, monkeypatch, "iterplug", LOSS + f"def tuneforge_losses():\n    return {returned}\n")
    plugins = create_plugin_manager(PluginSelection())
    assert plugins.contributions("iterplug") == ({} if returned == "[]" else {"loss": ["my_ce"]})


def test_an_entry_point_named_like_a_built_in_plugin_says_to_rename_it_not_to_block_it(tmp_path, monkeypatch, capsys):
    from tuneforge.commands.cli import main

    install_fake_distribution(tmp_path, monkeypatch, "clashplug", LOSS + "def tuneforge_losses():\n    return [SPEC]\n",
             entry_point="losses")
    expected = ("plugin 'losses' of distribution 'clashplug' has the name of tuneforge's own plugin 'losses', so "
                "it is not loaded; rename its entry point in group 'tuneforge' (in the "
                "[project.entry-points.tuneforge] table of its pyproject.toml, e.g. clashplug_losses = "
                "\"clashplug_mod\") or uninstall clashplug")
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    assert str(info.value) == expected and "TUNEFORGE_DISABLE_PLUGINS" not in str(info.value)
    main(["plugins"])  # the built-in stays listed with its components, the clash on a line of its own
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("losses ") and "cross_entropy" in line for line in lines)
    assert any(line.startswith("losses (clashplug)") and line.endswith(f"broken: {expected}") for line in lines)


def test_two_third_party_entry_points_of_one_name_are_not_told_to_block_it(tmp_path, monkeypatch):
    for distribution in ("twin_a", "twin_b"):
        install_fake_distribution(tmp_path, monkeypatch, distribution, "", entry_point="twin")
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    assert str(info.value) == (
        "two plugins are named 'twin': from distributions 'twin_a' and 'twin_b'; uninstall one, or rename the entry "
        "point of one in group 'tuneforge' (the [project.entry-points.tuneforge] table of its pyproject.toml); "
        "TUNEFORGE_DISABLE_PLUGINS=twin would block both")


def test_registry_suggests_the_closest_name():
    plugins = create_plugin_manager(PluginSelection())
    with pytest.raises(PluginError, match=r"unknown adapter 'lorra' \(did you mean 'lora'\?\)"):
        plugins["adapter"].get("lorra")


def test_a_renamed_entry_point_suggestion_is_a_snake_case_name():
    from tuneforge.host.plugin_manager import PluginInfo, name_clash

    fields = {f.name: None for f in __import__("dataclasses").fields(PluginInfo)}
    own = PluginInfo(**{**fields, "name": "adapters", "distribution": "tuneforge"})
    theirs = PluginInfo(**{**fields, "name": "adapters", "distribution": "acme-bad.Adapters", "module": "acme"})
    assert "e.g. acme_bad_adapters_adapters = \"acme\"" in name_clash(own, theirs)
