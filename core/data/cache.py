"""On-disk cache of tokenized data.

A cache entry is one JSON file (never a pickle: a cache file must not be able
to run code when read) named by a SHA-256 key over everything that
changes the tokenized output: the content of the records (after the split,
shuffle and ``max_examples``, with their sources), a fingerprint of the
tokenizer's *content* (its serialized vocabulary, merges, normalizers, added
tokens, special tokens, settings and own chat template; not its name or path),
the chat template in use, the format options, the max length and
truncation policy, and a version of this code.  A changed tokenizer or
template therefore never reuses a stale entry.  Entries are written atomically
(temporary file, fsync, rename), so a crash or a concurrent writer never
leaves a half-written file behind; an unreadable entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("tuneforge")

#: bump when the tokenized output of the same inputs changes
CACHE_VERSION = 8  # 4: per-message weight/train marks, alpaca history, prompt_completion; 5: input_output;
#                   6: loss_weight marks; 7: an opening assistant turn's role header is not trained;
#                   8: preference examples keep rejected_messages (the quality report reads the rejected text)

#: tokenizer init arguments that name files or locations, not content
_LOCATION_KWARGS = ("name_or_path", "cache_dir", "local_files_only", "revision", "token", "use_auth_token",
                    "_commit_hash", "trust_remote_code")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tuneforge/data``, else ``~/.cache/tuneforge/data``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tuneforge" / "data"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr, separators=(",", ":"))


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of a tokenizer's content: anything that can change the token ids it produces.

    Covers the backend serialization of fast tokenizers (vocabulary, merges,
    normalizer, pre-tokenizer, post-processor, added tokens) or the vocabulary
    of slow ones, the special tokens, the init settings that are plain values
    (``add_bos_token`` ...; file locations excluded) and the chat template.
    """
    import transformers

    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(_canonical(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    init = {key: value for key, value in getattr(tokenizer, "init_kwargs", {}).items()
            if key not in _LOCATION_KWARGS and not key.endswith("_file")
            and isinstance(value, (str, int, float, bool, type(None)))}
    added = {int(index): str(token) for index, token in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    meta = {"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map, "init": init,
            "added": added, "chat_template": getattr(tokenizer, "chat_template", None),
            "transformers": transformers.__version__}
    digest.update(_canonical(meta).encode("utf-8"))
    return digest.hexdigest()


def records_fingerprint(*groups) -> str:
    """SHA-256 of record groups (each a list of :class:`~tuneforge.data.Record`): data and sources."""
    digest = hashlib.sha256()
    for group in groups:
        digest.update(b"\x00group\x00")
        for record in group:
            digest.update(_canonical([record.source, record.data]).encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()


def cache_key(*, records: str, tokenizer: str, chat_template: Optional[str], options: dict) -> str:
    """The cache key: SHA-256 over the fingerprints, the chat template in use and the options."""
    payload = {"version": CACHE_VERSION, "records": records, "tokenizer": tokenizer,
               "chat_template": chat_template, "options": options}
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


def cache_path(cache_dir: Optional[str | Path], key: str) -> Path:
    return Path(cache_dir).expanduser() / f"{key}.json" if cache_dir else default_cache_dir() / f"{key}.json"


def load_cached(path: Path) -> Optional[Any]:
    """The cached value at ``path``, or ``None`` when absent or unreadable (logged, then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with path.open("r", encoding="utf-8") as handle:
            value = json.load(handle)
    except Exception as exc:  # a truncated or foreign file: rebuild it rather than fail the run
        log.warning("data cache entry %s is unreadable (%s); rebuilding it", path, type(exc).__name__)
        return None
    if not isinstance(value, dict) or value.get("version") != CACHE_VERSION:
        return None
    return value


def save_cached(path: Path, value: dict) -> bool:
    """Write ``value`` atomically; returns ``False`` (logged) when the cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp", delete=False)
        try:
            with handle:
                json.dump(dict(value, version=CACHE_VERSION), handle, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
    except (OSError, TypeError, ValueError) as exc:  # TypeError: a record value JSON cannot hold
        log.warning("cannot write the data cache entry %s (%s); continuing without it", path, exc)
        return False
    return True
