"""Dataset registries of other projects, recognised so that pointing ``data.path`` at one says what to do.

LLaMA-Factory lists its datasets in ``dataset_info.json``: one object whose entries name a data file
(``file_name``) or a hub dataset and map the file's keys to its fields (``columns``, ``tags``).  It holds
no records; read as data it would be one unreadable record.  :func:`registry_problem` gives the one-line
error that names it and translates its first entry into tuneforge's settings (``data.path``,
``data.columns`` and, for role names tuneforge does not read as they are (``user_tag``, ``assistant_tag``,
``system_tag``, ``observation_tag``, ``function_tag``), ``data.roles``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

#: keys of a LLaMA-Factory dataset_info.json entry that say where the data is
_WHERE = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")

#: LLaMA-Factory column name -> tuneforge canonical field (``columns`` of an entry)
_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
            "system": "system", "messages": "conversations", "tools": "tools", "chosen": "chosen",
            "rejected": "rejected", "kto_tag": "kto_tag"}

#: LLaMA-Factory tag -> tuneforge message key (``tags`` of an entry)
_TAGS = {"role_tag": "role", "content_tag": "content"}

#: LLaMA-Factory role tag -> the tuneforge role of the messages it names (``tags`` of an entry), as ``data.roles``
_ROLE_TAGS = {"user_tag": "user", "assistant_tag": "assistant", "system_tag": "system",
              "observation_tag": "observation", "function_tag": "function_call"}


def is_llama_factory_registry(value: Any) -> bool:
    """Whether a ``.json`` file's top-level object is a LLaMA-Factory ``dataset_info.json``: every entry an
    object, at least one naming its data (``file_name``, ``hf_hub_url`` ...)."""
    return (isinstance(value, dict) and bool(value) and all(isinstance(entry, dict) for entry in value.values())
            and any(key in entry for entry in value.values() for key in _WHERE))


def _entry_settings(folder: Path, entry: dict) -> str:
    """tuneforge's overrides for one registry entry: ``data.path=... 'data.columns={...}'``."""
    if "file_name" in entry:
        where = f"data.path={folder / str(entry['file_name'])}"
    else:
        hub = next(str(entry[key]) for key in _WHERE if key in entry)
        where = f"data=hf data.path={hub}"
    columns = entry.get("columns") if isinstance(entry.get("columns"), dict) else {}
    tags = entry.get("tags") if isinstance(entry.get("tags"), dict) else {}
    mapping = {_COLUMNS[name]: str(key) for name, key in columns.items() if name in _COLUMNS}
    mapping.update({_TAGS[name]: str(key) for name, key in tags.items() if name in _TAGS})
    if mapping.get("conversations") == "messages":
        mapping["conversations"] = "conversations"  # tuneforge reads a 'messages' key as it is
    mapping = {canonical: key for canonical, key in mapping.items() if canonical != key}
    settings = where + (" 'data.columns={" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}'"
                        if mapping else "")
    roles = _entry_roles(tags)
    if roles:
        settings += " 'data.roles={" + ", ".join(f"{name}: {role}" for name, role in roles.items()) + "}'"
    if entry.get("ranking"):
        settings += " loss=dpo"
    return settings


def _entry_roles(tags: dict) -> dict:
    """``data.roles`` for an entry's role tags (``{"assistant_tag": "model"}`` -> ``{model: assistant}``):
    the role names tuneforge does not already read as that role."""
    from tuneforge.data.messages import ROLE_ALIASES, resolve_role

    def same(read: str, role: str) -> bool:  # a ShareGPT function_call turn is read unlike other assistant turns
        return ROLE_ALIASES[read] == ROLE_ALIASES[role] and (read == "function_call") == (role == "function_call")

    roles = {}
    for tag, role in _ROLE_TAGS.items():
        name, read = tags.get(tag), resolve_role(tags.get(tag), {})
        if isinstance(name, str) and name and not (read and same(read, role)):
            roles[name] = role
    return roles


def registry_problem(path: Path, value: dict) -> Optional[str]:
    """The one-line error for a LLaMA-Factory ``dataset_info.json`` read as data (None: not one)."""
    if not is_llama_factory_registry(value):
        return None
    name, entry = next((name, entry) for name, entry in value.items() if any(key in entry for key in _WHERE))
    more = len(value) - 1
    others = f" (and {more} more {'entry' if more == 1 else 'entries'})" if more else ""
    return (f"{path}: this is LLaMA-Factory's dataset list (dataset_info.json), not records; tuneforge reads the "
            f"data files themselves, with their column mapping as data.columns: for its entry '{name}', "
            f"{_entry_settings(path.parent, entry)}{others}; a data folder given as data.path must not hold it")
