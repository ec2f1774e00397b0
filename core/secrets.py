"""Keeping tokens and API keys out of everything tuneforge writes.

Secrets are (a) values of config keys whose name says they are secret
(``token``, ``api_key``, ``password`` ...) and (b) the values of environment
variables with such names (``HF_TOKEN``, ``WANDB_API_KEY`` ...), wherever they
appear (a resolved ``${oc.env:HF_TOKEN}`` interpolation, a log line), and (c)
the ``user:password`` part of URLs (e.g. a tracker's ``https://user:pw@host``).
"""

from __future__ import annotations

import logging
import os
import re

REDACTED = "***"
#: names that say a value is secret; ``tokenize``/``tokenizer`` and ``author`` are settings, not secrets
SECRET_NAME = re.compile(r"(token(?!i[sz])|secret|password|passwd|api[_-]?key|access[_-]?key|credential"
                         r"|auth(?!or(?!i[sz])))", re.IGNORECASE)
MIN_SECRET_LENGTH = 6
URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]+(?=@)")


def secret_values() -> list[str]:
    """Values of secret-named environment variables, longest first."""
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets=None) -> str:
    for value in secrets if secrets is not None else secret_values():
        text = text.replace(value, REDACTED)
    return URL_CREDENTIALS.sub(REDACTED, text)


def redact(value, secrets=None, key: str = ""):
    """A copy of a plain container (dicts/lists/scalars) with secrets replaced by ``***``."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, dict):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets, key) for v in value)
    if isinstance(value, str):
        if key and SECRET_NAME.search(key) and value:
            return REDACTED
        return redact_text(value, secrets)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that removes secret values from every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if secrets:
            message = record.getMessage()
            cleaned = redact_text(message, secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactingFilter` to every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
