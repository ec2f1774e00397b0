"""Every hook is documented (docs match the specs) and exercised somewhere."""

import inspect
from pathlib import Path

from tuneforge import hookspecs
from tuneforge.host.hook_docs import hook_names, render_hook_reference

ROOT = Path(__file__).resolve().parents[1]


def test_docs_contain_the_generated_hook_reference():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert render_hook_reference() in docs, "regenerate with: python -m tuneforge.host.hook_docs --write docs/plugins.md"


def test_every_hook_has_a_docstring_and_is_implemented_or_tested():
    names = hook_names()
    assert len(names) >= 8
    code = "\n".join(p.read_text() for folder in ("plugins", "tests") for p in (ROOT / folder).rglob("*.py")
                     if p.name != "test_docs.py")
    for name in names:
        assert len(inspect.getdoc(getattr(hookspecs, name)) or "") > 40, name
        assert f"def {name}(" in code, f"hook {name} is neither implemented by a built-in nor tested"


def test_every_lifecycle_hook_has_exactly_one_call_site():
    core = "\n".join(p.read_text() for p in (ROOT / "core").rglob("*.py"))
    for name in hook_names():
        spec = getattr(hookspecs, name)
        if inspect.signature(spec).parameters:  # lifecycle hooks take arguments
            assert core.count(f"hook.{name}(") == 1, name


def test_docs_contain_the_generated_spec_and_component_references():
    from tuneforge.host.hook_docs import generated_sections

    docs = (ROOT / "docs" / "plugins.md").read_text()
    for begin, _end, rendered in generated_sections():
        assert rendered in docs, f"stale section after {begin!r}: python -m tuneforge.host.hook_docs --write docs/plugins.md"


def test_every_spec_field_and_built_in_config_key_has_a_doc():
    from tuneforge.host.hook_docs import undocumented_fields

    assert undocumented_fields() == [], "document these fields (a `field: doc` line in the class docstring)"
