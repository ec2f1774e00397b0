"""Plugin discovery through entry points: errors, collisions, blocking, validation."""

import sys

import pytest

from helpers import FIXTURES
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


def test_registry_suggests_the_closest_name():
    plugins = create_plugin_manager(PluginSelection())
    with pytest.raises(PluginError, match=r"unknown adapter 'lorra' \(did you mean 'lora'\?\)"):
        plugins["adapter"].get("lorra")
