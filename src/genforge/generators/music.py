"""A loaded language model of music (`genforge.load` of a run trained on folk-abc, bach-chorales or a folder of
music): a text generator that also composes whole, checked pieces (genforge/music/compose.py)."""

from __future__ import annotations

from genforge.generators.text import TextGenerator
from genforge.music.compose import Composer


class MusicGenerator(Composer, TextGenerator):
    """`compose(prompt, n, ...)` -> (pieces, counts): whole tunes (ABC) or pieces (events), each checked; each
    `Piece` gives its `text`, `score()` (notes) and `stream()` (music21). `generate`/`stream` are the plain text
    model's, for continuing any text."""
