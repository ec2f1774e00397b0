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
            assert core.count(f"hook.{name}(") + core.count(f'call_lifecycle_hook("{name}"') == 1, name


def test_docs_contain_the_generated_spec_and_component_references():
    from tuneforge.host.hook_docs import generated_sections

    docs = (ROOT / "docs" / "plugins.md").read_text()
    for begin, _end, rendered in generated_sections():
        assert rendered in docs, f"stale section after {begin!r}: python -m tuneforge.host.hook_docs --write docs/plugins.md"


def test_every_spec_field_and_built_in_config_key_has_a_doc():
    from tuneforge.host.hook_docs import undocumented_fields

    assert undocumented_fields() == [], "document these fields (a `field: doc` line in the class docstring)"


def _paragraphs(text: str) -> list:
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


def _is_prose(block: list) -> bool:
    first = block[0]
    return not first.startswith(("|", "#", "<!--", "    ", "- ", "* ", "```", ":param"))


def fragments(text: str) -> list:
    """Prose paragraphs of ``text`` that start in the middle of a sentence (a lower-case word, an opening
    parenthesis) or stop in the middle of one (no closing punctuation)."""
    found = []
    for block in _paragraphs(text):
        if not _is_prose(block):
            continue
        first, last = block[0].lstrip(), block[-1].rstrip()
        if first[:1].islower() or first.startswith("("):
            found.append(f"starts mid-sentence: {first!r}")
        if not last.endswith((".", ":", "!", "?", ")", "`", ".)")):
            found.append(f"stops mid-sentence: {last!r}")
    return found


def test_the_fragment_check_catches_cut_paragraphs():
    assert fragments("Whole sentence.\n\nfolder as full weights.\n\n(a metric without an entry counts.)") == [
        "starts mid-sentence: 'folder as full weights.'",
        "starts mid-sentence: '(a metric without an entry counts.)'"]
    assert fragments("An ``evaluate`` with a\n\n| a | table |") == ["stops mid-sentence: 'An ``evaluate`` with a'"]


def test_the_generated_references_read_in_whole_sentences_and_keep_every_docstring_line():
    import re

    from tuneforge.host.config_docs import _FIELD_LINE
    from tuneforge.host.hook_docs import (_extra_public_dataclasses, render_hook_reference, render_spec_reference,
                                          spec_classes)

    for rendered in (render_hook_reference(), render_spec_reference()):
        assert fragments(rendered) == []
    rendered = re.sub(r"\s+", " ", render_spec_reference().replace("\\|", "|"))
    for cls in [*spec_classes(), *_extra_public_dataclasses()]:
        for line in (inspect.getdoc(cls) or "").splitlines():
            if not line.strip():
                continue
            text = re.sub(r"\s+", " ", line.strip()).replace("``<group>=<name>``", "")
            field = _FIELD_LINE.match(line)
            shown = field and re.sub(r"\s+", " ", (field.group("text") or field.group("text2")).strip())
            assert any(part in rendered for part in (text, shown) if part), f"{cls.__name__}: lost {line!r}"
    # the `name` row says each kind's own group
    assert "(``loss=<name>``)" in rendered and "(``evaluators=[<name>]``)" in rendered
    assert "(``adapter=<name>``)" in rendered and rendered.count("(``adapter=<name>``)") == 1


def test_the_hook_reference_names_every_built_in_component_under_its_hook():
    """The built-ins are read from the registry, not written in the hook docstrings (where they went stale)."""
    from tuneforge.host.plugin_manager import OWN_DISTRIBUTION, PluginSelection, create_plugin_manager
    from tuneforge.specs import SPEC_KINDS

    plugins = create_plugin_manager(PluginSelection(autoload=False))
    sections = {part.split("(", 1)[0]: part for part in render_hook_reference(plugins).split("### `")[1:]}
    for group, hook, _multiple in SPEC_KINDS.values():
        own = [n for n in plugins[group].names() if plugins[group].origin(n).distribution == OWN_DISTRIBUTION]
        assert own, group
        missing = [n for n in own if f"``{n}``" not in sections[hook]]
        assert missing == [], f"{hook} does not name the built-in {missing}"
        assert "Built-in" not in inspect.getdoc(getattr(hookspecs, hook)), f"{hook}: a hand-written list of built-ins"
    assert all(f"``{n}``" in sections["tuneforge_losses"] for n in ("orpo", "simpo", "kto", "reward", "grpo"))


def test_data_docs_name_every_format_and_column_field_the_code_reads():
    """docs/data.md and ``tuneforge config show data=...`` (the DataConfig docs) against the parser's own lists."""
    import re

    from tuneforge.data import FORMATS, MESSAGE_FIELDS, RECORD_FIELDS, DataConfig
    from tuneforge.host.config_docs import describe_fields

    data_md = (ROOT / "docs" / "data.md").read_text()
    format_row = next(line for line in data_md.splitlines() if line.startswith("| `format` |"))
    canonical = re.sub(r"\s+", " ", data_md.split("Canonical fields:", 1)[1].split("(the keys inside", 1)[0])
    shown = {row.name: row.doc for row in describe_fields(DataConfig)}
    for name in FORMATS:
        assert f"`{name}`" in format_row, f"docs/data.md: format row lacks {name}"
        assert f"``{name}``" in shown["format"], f"DataConfig doc of format lacks {name}"
    assert f"data.format={'|'.join(n for n in FORMATS if n != 'auto')}`" in data_md  # the Formats section
    for name in RECORD_FIELDS + MESSAGE_FIELDS:
        assert f"`{name}`" in canonical, f"docs/data.md: canonical fields lack {name}"
        assert re.search(rf"\b{name}\b", shown["columns"].split("Canonical fields:", 1)[1]), name
