"""Composing with a language model of music: the part the torch generator and the torch-free runtime share.

A music model is a text model whose text is ABC or note events, so `Composer` is a mixin over any text
generator (`genforge.load`'s, the runtime's): it puts a prompt in the normal form the model learnt, lets the
model write until the blank line that ends a piece, and checks the piece (it parses, its bars fit the metre).
Pieces that fail are dropped and counted unless asked for. The text mark is never applied: biasing tokens would
change the music, and a piece's provenance travels in its files instead (media/music.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from genforge.errors import UserError

PIECE_END = "\n\n"  # a blank line ends an ABC tune; the corpora join pieces with one
DEFAULT_TOKENS = {"abc": 1000, "events": 2500}
_EVENT_HEADER = re.compile(r"^M:\d+/\d+ K:-?\d+$")  # a long reel is ~600 characters, a chorale ~2,000 events


@dataclass
class Piece:
    """One generated tune or piece: its whole text (prompt included), whether it is valid, and why not."""

    text: str
    kind: str  # "abc" or "events"
    valid: bool
    reason: str  # "ok", or why the piece was judged invalid
    complete: bool = True  # ended with a blank line within the token limit

    def score(self):
        """The notes (`genforge.music.notes.Score`); MusicError when the text does not parse."""
        if self.kind == "abc":
            from genforge.music.abc import abc_score
            return abc_score(self.text)
        from genforge.music.events import events_to_score
        return events_to_score(self.text)

    def stream(self):
        """The piece as a music21 stream (to show, analyse or write with music21)."""
        if self.kind == "abc":
            from genforge.music.abc import parse_abc
            return parse_abc(self.text)
        from genforge.music.events import events_to_stream
        return events_to_stream(self.text)


def check_piece(text: str, kind: str, complete: bool = True) -> tuple[bool, str]:
    """(valid, reason) for a piece's text: it ended, it parses, and its bars fit its metre."""
    if not complete:
        return False, "incomplete: no end within the token limit"
    from genforge.music.validity import validity  # torch-free: the runtime checks pieces too

    v = validity(text, kind)
    if not v["parses"]:
        return False, v["reason"]
    if not v["metre_ok"]:
        return False, v["reason"]
    return True, "ok"


def music_kind(meta: dict) -> str | None:
    """"abc" or "events" for a music run (its config.json) or export (its export.json), else None."""
    music = (meta.get("data") or {}).get("music") or meta.get("music")
    return None if not music else music.get("kind")


class Composer:
    """Mixin for text generators of music (the class that mixes it in provides `jobs` and `run`)."""

    modality = "music"

    @property
    def music_kind(self) -> str:
        return music_kind(self.meta) or "abc"

    def piece_prompt(self, prompt: str | None) -> str:
        """The prompt in the model's normal form: ABC header fields in any order become the tune start the model
        learnt (genforge.music.abc.prompt_header); event text (e.g. a header 'M:3/4 K:1') follows the blank line
        that precedes every piece in training, so even an empty prompt starts a piece at its header."""
        if self.music_kind == "abc":
            from genforge.music.abc import prompt_header
            return prompt_header(prompt or "")
        text = (prompt or "").replace("\\n", "\n").lstrip("\n")
        if _EVENT_HEADER.match(text.strip()):  # a header alone is a whole line: the piece's bars follow it
            text = text.strip() + "\n"
        return PIECE_END + text

    def compose(self, prompt: str | None = None, n: int = 1, max_new_tokens: int | None = None,
                temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                seed: int | None = None, keep_invalid: bool = False, max_tries: int = 4) -> tuple[list[Piece], dict]:
        """Up to `n` pieces continuing `prompt` (e.g. "M:6/8\\nK:D" for a jig in D), and counts of what was drawn
        and dropped. Invalid pieces are redrawn (in batches, up to `max_tries` rounds) unless `keep_invalid`.
        The same seed gives the same pieces."""
        if n < 1:
            raise UserError(f"n must be at least 1; got {n}.")
        kind = self.music_kind
        start = self.piece_prompt(prompt)
        limit = max_new_tokens or DEFAULT_TOKENS[kind]
        kept: list[Piece] = []
        counts = {"drawn": 0, "kept": 0, "invalid": 0, "incomplete": 0, "reasons": {}}
        base = 0 if seed is None else int(seed)
        for attempt in range(1 if keep_invalid else max_tries):
            want = n - len(kept)
            if want <= 0:
                break
            round_seed = None if seed is None else base + attempt
            starts = [start] * want
            if kind == "events" and not _EVENT_HEADER.match(start.lstrip("\n")):
                starts = [start + h + "\n" if h else start
                          for h in self._event_headers(start, want, temperature, round_seed)]
            jobs = self.jobs(starts, limit, temperature, top_k, top_p, round_seed, [PIECE_END], mark=False)
            texts = _texts(self.run(jobs), want)
            for job, begin, text in zip(jobs, starts, texts):
                complete = job.finish_reason == "stop"
                full = (begin + text).strip("\n")
                ok, why = check_piece(full, kind, complete)
                counts["drawn"] += 1
                if not ok:
                    counts["invalid"] += 1
                    counts["incomplete"] += not complete
                    counts["reasons"][why] = counts["reasons"].get(why, 0) + 1
                if ok or keep_invalid:
                    kept.append(Piece(full, kind, ok, why, complete))
        counts["kept"] = len(kept)
        return kept[:n], counts

    def _event_headers(self, start: str, n: int, temperature: float, seed: int | None, rounds: int = 8) -> list[str]:
        """n header lines ("M:3/4 K:1") drawn from the model after `start`, keeping only draws that are headers:
        rejection sampling, so each is a draw from the model's distribution given that a piece starts. Needed
        because a model sees "\n\n" at the very start of its context only rarely in training, and there it
        writes a bar as often as a header. A model that writes no header in all the tries gets "" for the rest:
        its pieces start as it writes them (and are judged invalid)."""
        out: list[str] = []
        for r in range(rounds):
            k = 4 * (n - len(out))
            jobs = self.jobs([start] * k, 2, temperature, None, None, None if seed is None else seed * 7919 + r,
                             None, mark=False)
            out += [t.strip() for t in _texts(self.run(jobs), k) if _EVENT_HEADER.match(t.strip())]
            if len(out) >= n:
                return out[:n]
        return out + [""] * (n - len(out))


def _texts(steps, n: int) -> list[str]:
    """Each job's whole text from a run's per-step pieces."""
    texts = [""] * n
    for pieces in steps:
        for i, piece in enumerate(pieces):
            if piece:
                texts[i] += piece
    return texts
