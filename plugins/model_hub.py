"""Whether a Hugging Face hub id of the ``hf`` model source can be loaded here, asked before transformers tries.

transformers asks huggingface_hub for each file of a hub id.  When the file is not in the local cache and the
hub cannot be reached, huggingface_hub asks again with retries (five, 1 + 2 + 4 + 8 + 8 s apart: about 23 s),
and a run asks for ``config.json`` three times (the memory estimate, then the tokenizer twice), so a run without
network failed after about 70 s; under ``HF_HUB_OFFLINE=1`` it failed at once, but the message did not say that
offline mode was on.  :func:`hub_arguments` fails at once instead, in one line, for a hub id that is not cached
while offline mode is on or the hub does not answer.  A cached hub id loads from the cache as before; when the
hub does not answer it is read with ``local_files_only`` (the same files: huggingface_hub falls back to them,
but retried each optional file the cache lacks, about 23 s each: 170 s for a small model).  Local folders and
``.gguf`` files are left to transformers.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

from tuneforge.errors import ModelError

#: seconds to wait for a TCP connection to the hub before calling it unreachable
HUB_CONNECT_TIMEOUT_S = 5.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: what each ``model.*`` field of a hub id may be instead, and the file that marks it as cached
_FIELDS = {"path": ("a local folder with config.json, a .gguf file", "config.json"),
           "tokenizer": ("a local folder with the tokenizer's files (tokenizer_config.json)", "tokenizer_config.json")}


def hub_arguments(config, fields=("path", "tokenizer")) -> dict:
    """``from_pretrained`` keywords for the hub ids among ``fields`` of ``config`` (an ``HFModelConfig``:
    ``path``, ``tokenizer``): ``{"local_files_only": True}`` when they are all cached and the hub does not answer
    (the same cached files, without huggingface_hub's retries for each file the cache lacks), else ``{}``.

    Raises a one-line :class:`ModelError` for a hub id that is not in the local cache and cannot be downloaded:
    offline mode is on, or the hub does not answer within :data:`HUB_CONNECT_TIMEOUT_S` seconds.  Local
    folders and ``.gguf`` files are not checked."""
    hub_ids = {field: str(getattr(config, field)) for field in fields
               if getattr(config, field, None) and is_hub_id(str(getattr(config, field)))}
    if not hub_ids:
        return {}
    for field, value in hub_ids.items():
        alternatives, marker = _FIELDS[field]
        problem = None if _cached(value, marker, config.revision) else _why_not_downloadable()
        if problem:
            raise ModelError(f"model.{field}='{value}' is not in the local Hugging Face cache {_cache_folder()} "
                             f"and {problem}; give model.{field} {alternatives}, or download it first with "
                             f"network ({download_command(value)}) and run again")
    return {"local_files_only": True} if _why_not_downloadable() else {}


def download_command(repo_id: str) -> str:
    """The shell command that downloads ``repo_id`` with the installed huggingface_hub: ``hf download`` from
    0.34 on, ``huggingface-cli download`` before (the oldest supported release has only that one)."""
    from huggingface_hub import __version__

    major, minor = (int(part) for part in __version__.split(".")[:2])
    return f"{'hf' if (major, minor) >= (0, 34) else 'huggingface-cli'} download {repo_id}"


def is_hub_id(value: str) -> bool:
    """Whether ``model.path``/``model.tokenizer`` names a hub repository, not a local folder or ``.gguf`` file."""
    return not value.endswith(".gguf") and not Path(value).expanduser().exists()


def _cached(repo_id: str, filename: str, revision: Optional[str]) -> bool:
    """Whether ``filename`` of ``repo_id`` at ``revision`` (None: main) is in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
    except ValueError:  # not a valid repository id: not cached (transformers says what is wrong with it)
        return False


def _why_not_downloadable() -> Optional[str]:
    """Why nothing can be downloaded from the hub now (offline mode, or the hub does not answer), or None."""
    from huggingface_hub import constants

    variable = offline_variable()
    if variable:
        return f"offline mode is on ({variable}={os.environ.get(variable, '1')}), so it is not downloaded"
    if not _hub_answers(constants.ENDPOINT):
        return (f"the Hugging Face hub could not be reached (no connection to {constants.ENDPOINT} within "
                f"{HUB_CONNECT_TIMEOUT_S:g} s), so it is not downloaded")
    return None


def offline_variable() -> Optional[str]:
    """The environment variable that turned huggingface_hub's offline mode on (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE``), or None when it is off."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return None
    on = [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")]
    return on[0] if on else OFFLINE_VARIABLES[0]


def _cache_folder() -> str:
    """The hub cache folder and the ``HF_HOME`` it is under, for messages."""
    from huggingface_hub import constants

    return f"{constants.HF_HUB_CACHE} (HF_HOME={constants.HF_HOME})"


@functools.lru_cache(maxsize=None)
def _hub_answers(endpoint: str) -> bool:
    """Whether the hub at ``endpoint`` takes a TCP connection (asked once per process and endpoint;
    :func:`tuneforge.data.hub_reachable`: True behind an HTTPS proxy, which it cannot ask through)."""
    from tuneforge.data import hub_reachable

    return hub_reachable(HUB_CONNECT_TIMEOUT_S)
