"""Text <-> token ids: character, byte and byte-level BPE vocabularies behind one small interface.

A tokenizer is saved next to the model as `tokenizer.json` (`to_json` / `tokenizer_from_json`), so a run
directory always decodes exactly the ids it was trained on. Every kind encodes any string without
raising: byte and BPE cover all of UTF-8; char maps a character it never saw to one reserved
unknown id (decoded as U+FFFD), because a prompt typed by a user may hold anything.

Losses are compared across tokenizers in bits per *unit*: per character for `char`, per UTF-8 byte for
`byte` and `bpe` (the standard bits-per-byte figure). `units_per_token()` gives, for each id, how many
units it stands for, so an evaluator computes `sum(nll) / ln 2 / sum(units_per_token[targets])`
without decoding; `count_units(text)` gives the same total straight from text.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genforge.errors import UserError

if TYPE_CHECKING:
    import torch

KINDS = ("char", "byte", "bpe", "event")
FORMAT_VERSION = 1
REPLACEMENT = "\ufffd"
DEFAULT_BPE_VOCAB = 2048


class Tokenizer(ABC):
    """Common interface; subclasses fill in the vocabulary-specific parts."""

    kind: str
    vocab_size: int
    unit: str  # what bits-per-unit is normalised by: "char" or "byte"
    unk_id: int | None = None  # the id of text outside the vocabulary (char only); generation never samples it

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        ...

    @abstractmethod
    def to_json(self) -> str:
        ...

    @abstractmethod
    def units_per_token(self) -> list[int]:
        """How many chars (char) or UTF-8 bytes (byte, bpe) each id stands for, indexed by id."""
        ...

    def encode_tensor(self, text: str) -> torch.Tensor:
        """A whole corpus as a 1-D int64 tensor; subclasses override where a vectorised path exists."""
        import torch

        return torch.tensor(self.encode(text), dtype=torch.long)

    def count_units(self, text: str) -> int:
        return len(text) if self.unit == "char" else len(text.encode("utf-8"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One id per distinct corpus character, in sorted order, then one unknown id at the end.

    Sorted order keeps ids identical to nanoGPT's char-level Shakespeare (65 characters -> ids 0..64),
    so loss figures are directly comparable; the unknown id is 65 there.
    """

    kind = "char"
    unit = "char"

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise UserError("A char tokenizer needs a list of distinct single characters. "
                            "Fix: rebuild it with train_tokenizer('char', text).")
        self.chars = sorted(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.unk_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        unk, stoi = self.unk_id, self.stoi
        return [stoi.get(c, unk) for c in text]

    def encode_tensor(self, text: str) -> torch.Tensor:
        import torch

        # Vocabulary is sorted by code point, so a binary search maps every character at once.
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if len(self._codepoints) == 0:
            return torch.full((len(cps),), self.unk_id, dtype=torch.long)
        pos = np.searchsorted(self._codepoints, cps).clip(max=len(self._codepoints) - 1)
        ids = np.where(self._codepoints[pos] == cps, pos, self.unk_id)
        return torch.from_numpy(ids)

    def decode(self, ids: list[int]) -> str:
        chars, n = self.chars, len(self.chars)
        return "".join(chars[i] if 0 <= i < n else REPLACEMENT for i in ids)

    def units_per_token(self) -> list[int]:
        return [1] * self.vocab_size

    def to_json(self) -> str:
        return json.dumps({"kind": "char", "version": FORMAT_VERSION, "chars": self.chars}, ensure_ascii=False)


class ByteTokenizer(Tokenizer):
    """The 256 UTF-8 byte values: no training, nothing unknown, works for every language."""

    kind = "byte"
    unit = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        import torch

        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids: list[int]) -> str:
        # A model may emit a byte sequence that is not valid UTF-8 (or an id past 255 if its vocab is
        # padded); show those as U+FFFD instead of failing mid-stream.
        data = bytes(i if 0 <= i < 256 else 0xFF for i in ids)
        return data.decode("utf-8", errors="replace")

    def units_per_token(self) -> list[int]:
        return [1] * 256

    def to_json(self) -> str:
        return json.dumps({"kind": "byte", "version": FORMAT_VERSION})


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers`: merges learnt on the corpus over a 256-byte base."""

    kind = "bpe"
    unit = "byte"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if len(text) <= _BPE_CHUNK:
            return self.hf.encode(text, add_special_tokens=False).ids
        # Large corpora: encode chunks in parallel (Rust threads). Chunks are cut only at a newline
        # with a non-space character on both sides, where the byte-level pre-tokenizer always splits,
        # so the ids equal those of one encode() call over the whole text.
        encodings = self.hf.encode_batch(_safe_chunks(text), add_special_tokens=False)
        return [i for enc in encodings for i in enc.ids]

    def decode(self, ids: list[int]) -> str:
        n = self.vocab_size
        if all(0 <= i < n for i in ids):
            return self.hf.decode(ids, skip_special_tokens=False)
        # Ids past the vocabulary (a model whose embedding is padded, e.g. to a multiple of 64) show
        # as U+FFFD, like unknown ids in the other tokenizers.
        pieces, run = [], []
        for i in ids:
            if 0 <= i < n:
                run.append(i)
            else:
                pieces += [self.hf.decode(run, skip_special_tokens=False), REPLACEMENT]
                run = []
        return "".join(pieces) + self.hf.decode(run, skip_special_tokens=False)

    def units_per_token(self) -> list[int]:
        # Byte-level BPE writes each byte as one printable character, so a token's string length is
        # its byte count.
        units = [0] * self.vocab_size
        for token, i in self.hf.get_vocab().items():
            units[i] = len(token)
        return units

    def to_json(self) -> str:
        return json.dumps({"kind": "bpe", "version": FORMAT_VERSION, "hf_tokenizer": self.hf.to_str()})


class EventTokenizer(Tokenizer):
    """One id per distinct word of the training text (music event text: `Bar`, `Pos_4`, `P67`, ...) and one
    for the newline; whitespace between words is not a token. Then one unknown id at the end.

    Decoding is a plain concatenation of each id's string, so text streamed id by id (`StreamDecoder`) equals
    the whole decode: the newline is itself, a word that only ever began a line in the training text (a *head*:
    `Bar`, `M:4/4`) is itself, every other word is " " + itself. Text written the way the training text was
    therefore comes back exactly; a head the model puts mid-line glues to the word before it and fails to parse,
    as it should. Losses are per event: every id, the newline included, is one unit.
    """

    kind = "event"
    unit = "event"

    def __init__(self, words: list[str], heads: list[str]):
        bad = [w for w in words if not w or any(c.isspace() for c in w)]
        if bad or len(set(words)) != len(words) or not set(heads) <= set(words):
            raise UserError("An event tokenizer needs distinct words without whitespace (heads among them). "
                            "Fix: rebuild it with train_tokenizer('event', text).")
        self.words = sorted(words)
        self.heads = sorted(heads)
        head = set(heads)
        self.pieces = ["\n"] + [w if w in head else " " + w for w in self.words] + [" " + REPLACEMENT]
        self.stoi = {w: i + 1 for i, w in enumerate(self.words)}
        self.newline_id = 0
        self.unk_id = len(self.words) + 1
        self.vocab_size = len(self.words) + 2

    def encode(self, text: str) -> list[int]:
        stoi, unk, ids = self.stoi, self.unk_id, []
        for k, line in enumerate(text.split("\n")):
            if k:
                ids.append(self.newline_id)
            ids += [stoi.get(w, unk) for w in line.split()]
        return ids

    def decode(self, ids: list[int]) -> str:
        pieces, unk = self.pieces, self.pieces[-1]
        return "".join(pieces[i] if 0 <= i < len(pieces) else unk for i in ids)

    def units_per_token(self) -> list[int]:
        return [1] * self.vocab_size

    def count_units(self, text: str) -> int:
        return len(self.encode(text))

    def to_json(self) -> str:
        return json.dumps({"kind": "event", "version": FORMAT_VERSION, "words": self.words, "heads": self.heads},
                          ensure_ascii=False)


def _train_event(text: str) -> EventTokenizer:
    starts, inner = set(), set()
    for line in text.split("\n"):
        words = line.split()
        if words:
            starts.add(words[0])
            inner.update(words[1:])
    if not starts:
        raise UserError("Cannot build an event vocabulary from text without words. Fix: pass the event-text corpus.")
    return EventTokenizer(sorted(starts | inner), sorted(starts - inner))


_BPE_CHUNK = 1 << 16
_PRETOKEN_BOUNDARY = re.compile(r"(?<=\S)\n(?=\S)")


def _safe_chunks(text: str) -> list[str]:
    chunks, start = [], 0
    while start < len(text):
        cut = _PRETOKEN_BOUNDARY.search(text, start + _BPE_CHUNK) if start + _BPE_CHUNK < len(text) else None
        end = cut.end() if cut else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def _train_bpe(text: str, vocab_size: int) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so any text encodes
        show_progress=False,
    )
    # Feed the corpus in line-aligned chunks: the trainer counts pre-tokenized words per chunk, and
    # one multi-megabyte string would be a single sequence.
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
    hf.train_from_iterator(chunks, trainer=trainer)
    return BPETokenizer(hf)


def train_tokenizer(kind: str, text: str, vocab_size: int | None = None) -> Tokenizer:
    """Build a tokenizer from a corpus. `vocab_size` applies to BPE only (default 2048, at least 256);
    char and byte vocabularies are fixed by the data and by UTF-8, so asking for a size is refused
    rather than silently ignored."""
    if kind not in KINDS:
        raise UserError(f"Unknown tokenizer kind {kind!r}. Fix: use one of {', '.join(KINDS)}.")
    if kind == "char":
        if vocab_size is not None:
            raise UserError("vocab_size applies to BPE only: a char vocabulary is the corpus's own characters. "
                            "Fix: leave vocab_size unset for kind 'char' (or use kind 'bpe').")
        if not text:
            raise UserError("Cannot build a char vocabulary from empty text. Fix: pass the training corpus.")
        return CharTokenizer(sorted(set(text)))
    if kind == "byte":
        if vocab_size not in (None, 256):
            raise UserError(f"A byte tokenizer always has 256 ids; got vocab_size={vocab_size}. "
                            "Fix: leave vocab_size unset for kind 'byte' (or use kind 'bpe').")
        return ByteTokenizer()
    if kind == "event":
        if vocab_size is not None:
            raise UserError("vocab_size applies to BPE only: an event vocabulary is the corpus's own words. "
                            "Fix: leave vocab_size unset for kind 'event'.")
        return _train_event(text)
    vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else int(vocab_size)
    if vocab_size < 256:
        raise UserError(f"A byte-level BPE vocabulary needs at least the 256 byte ids; got vocab_size={vocab_size}. "
                        "Fix: use vocab_size >= 256 (e.g. 512 to 50000), or kind 'byte'.")
    if not text:
        raise UserError("Cannot train BPE on empty text. Fix: pass the training corpus.")
    return _train_bpe(text, vocab_size)


def tokenizer_from_json(s: str) -> Tokenizer:
    """Rebuild a tokenizer from `to_json` output; a plain Hugging Face tokenizer.json is accepted too."""
    try:
        data = json.loads(s)
    except json.JSONDecodeError as e:
        raise UserError(f"The tokenizer JSON is not valid JSON ({e}). Fix: point to the tokenizer.json of a run.") from e
    if not isinstance(data, dict):
        raise UserError("The tokenizer JSON is not an object. Fix: point to the tokenizer.json of a run.")
    kind = data.get("kind")
    if kind is None and "model" in data:  # a bare Hugging Face tokenizer file
        data = {"kind": "bpe", "hf_tokenizer": s}
        kind = "bpe"
    if kind == "char":
        return CharTokenizer(list(data["chars"]))
    if kind == "byte":
        return ByteTokenizer()
    if kind == "event":
        return EventTokenizer(list(data["words"]), list(data.get("heads", [])))
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return BPETokenizer(HFTokenizer.from_str(data["hf_tokenizer"]))
        except Exception as e:  # the Rust side raises its own exception type
            raise UserError(f"The BPE tokenizer inside the JSON could not be read ({e}). "
                            "Fix: re-save it with Tokenizer.to_json().") from e
    raise UserError(f"Unknown tokenizer kind {kind!r} in JSON. Fix: it must be one of {', '.join(KINDS)}.")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer file, or the `tokenizer.json` inside a run directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"No tokenizer file at {path}. Fix: pass a run directory of a text model or its tokenizer.json.")
    return tokenizer_from_json(path.read_text(encoding="utf-8"))


class StreamDecoder:
    """Turns ids arriving one at a time into text pieces, holding back a byte or BPE id that ends
    in the middle of a multi-byte character until the character is complete."""

    def __init__(self, tokenizer: Tokenizer, max_pending: int = 8):
        self.tokenizer, self.max_pending = tokenizer, max_pending
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith(REPLACEMENT) and len(self.pending) < self.max_pending and self.tokenizer.kind != "char":
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text
