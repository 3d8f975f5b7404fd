"""What every generator (torch's `genforge.load`, the runtime's) shares for provenance: its mark key and the
record its outputs carry. Torch-free.

The key comes from `use_mark_key(...)`, else from the environment ($GENFORGE_MARK_KEY_FILE or
$GENFORGE_MARK_KEY) when the generator is loaded; with one, every image a generator renders is marked and every
text it samples carries the green-list mark (a text request may switch it off), and every clip it renders the
audio mark. Without one, outputs still carry metadata, and say that no mark was applied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from genforge.errors import UserError
from genforge.media.audio_mark import AudioMark
from genforge.media.provenance import Record
from genforge.media.text_mark import TextMark
from genforge.media.watermark import ImageMark, KeyError_, MarkKey, read_key

UNSET = object()


class Marking:
    """Mixin: `mark_key`, `image_mark`, `audio_mark`, `text_mark()`, `record()`. Needs `meta` (the run's or
    export's config)."""

    _mark_key = UNSET
    _model_hash: str | None = None

    def use_mark_key(self, key: MarkKey | str | Path | None | bool) -> None:
        """A MarkKey, a key file's path, None (from the environment) or False (no mark)."""
        if key is False:
            self._mark_key = None
        elif isinstance(key, MarkKey):
            self._mark_key = key
        else:
            try:
                self._mark_key = read_key(key)
            except KeyError_ as e:
                raise UserError(str(e)) from None

    @property
    def mark_key(self) -> MarkKey | None:
        if self._mark_key is UNSET:
            self.use_mark_key(None)
        return self._mark_key

    @property
    def image_mark(self) -> ImageMark | None:
        key = self.mark_key
        return ImageMark(key) if key is not None else None

    @property
    def audio_mark(self) -> AudioMark | None:
        key = self.mark_key
        return AudioMark(key) if key is not None else None

    def text_mark(self, vocab: int) -> TextMark | None:
        key = self.mark_key
        return TextMark(key, vocab) if key is not None else None

    def _weights_path(self) -> Path | None:
        return None

    def _weights_sha256(self) -> str:
        """SHA-256 of the weights the outputs come from (computed once)."""
        if self._model_hash is None:
            path = self._weights_path()
            digest = hashlib.sha256()
            if path is not None and path.is_file():
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                self._model_hash = "sha256:" + digest.hexdigest()
            else:
                self._model_hash = ""
        return self._model_hash

    def model_name(self) -> str:
        return str(self.meta.get("name") or getattr(self, "run_dir", None) or getattr(self, "path", ""))

    def record(self, seed: int | None = None, marked: bool | None = None, **parameters) -> Record:
        """The provenance of outputs generated now with `seed` and `parameters`; `marked`: whether the mark was
        applied (default: whether a key is set)."""
        from genforge import __version__

        key = self.mark_key
        applied = key is not None if marked is None else marked
        return Record(model=self.model_name(), model_hash=self._weights_sha256(), family=str(self.meta.get("family", "")),
                      version=__version__, seed=seed, parameters={k: v for k, v in parameters.items() if v is not None},
                      mark=key.id if (applied and key is not None) else "")


class ExportedMarking(Marking):
    """Marking for an export: its weights' hash is the run's, recorded at export time."""

    def _weights_sha256(self) -> str:
        sha = (self.meta.get("provenance") or {}).get("weights_sha256")
        return f"sha256:{sha}" if sha else ""
