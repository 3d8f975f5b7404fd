"""Symbolic music as text: the notation codecs (ABC tunes and note-event text, both to and from `Score`).

Music is text with a renderer (docs/design-notes.md, "Music"): a language model writes ABC or event text, and
this room turns that text into notes. data/ encodes corpora with it, media/ renders its notes to MIDI, audio
and piano rolls, evaluation/ measures them. music21 is imported lazily (the optional `music` extra).
"""
