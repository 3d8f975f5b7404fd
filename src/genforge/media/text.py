"""Generated text as files: UTF-8, with the provenance in a JSON sidecar (`x.txt.json`) beside it, since plain
text has nowhere to carry metadata; servers put the same record in the response instead."""

from __future__ import annotations

import json
from pathlib import Path

from genforge.media.provenance import Record

SIDECAR_SUFFIX = ".json"


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_text(texts: list[str], path: str | Path, record: Record | None = None, separator: str = "\n") -> str:
    """Write `texts` to `path` (joined by `separator`), and `record` with each text's mark score fields to the
    sidecar; both atomically. Returns what was written, for the user."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, separator.join(texts).encode())
    if record is None:
        return f"wrote {path}"
    side = sidecar_path(path)
    _atomic(side, (json.dumps({"provenance": record.as_dict(), "texts": len(texts)}, indent=2) + "\n").encode())
    return f"wrote {path} and its provenance {side.name}"


def read_sidecar(path: str | Path) -> dict | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return data.get("provenance") if isinstance(data, dict) else None


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
