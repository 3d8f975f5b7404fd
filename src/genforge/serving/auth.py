"""API keys: Bearer tokens from a file (one per line, `#` comments) or the GENFORGE_API_KEYS environment
variable (comma-separated). Compared in constant time; never logged or echoed."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from genforge.errors import UserError

ENV = "GENFORGE_API_KEYS"


def load_keys(path: str | Path | None = None) -> list[str]:
    """The keys from `path` and the environment; an empty list means no authentication."""
    keys: list[str] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"API key file not found: {path}. Fix: write one key per line into it.")
        keys += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not keys:
            raise UserError(f"{path} holds no API key. Fix: write one key per line (lines starting with # are comments).")
    keys += [k.strip() for k in os.environ.get(ENV, "").split(",") if k.strip()]
    short = [k for k in keys if len(k) < 16]
    if short:
        raise UserError(f"{len(short)} API key(s) shorter than 16 characters. Fix: use long random keys, e.g. "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.")
    return keys


def authorized(header: str | None, keys: list[str]) -> bool:
    """True when `header` is "Bearer <one of keys>" (or no keys are set). Every key is compared, each in
    constant time, so the time taken tells nothing about which key or how much of it matched."""
    if not keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    token = token.strip().encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token, key.encode())
    return ok and scheme.lower() == "bearer"
