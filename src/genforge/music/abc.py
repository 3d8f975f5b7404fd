"""ABC tunes: split a file into tunes, normalise each to the one shape the models learn, parse it to notes.

The normal form (what `folk-abc` trains on and what a prompt is completed from):

    X:1
    R:jig          (when the source names the tune type)
    M:6/8          (M:none for free metre)
    L:1/8          (ABC's default written out when the source leaves it implicit)
    K:Em
    body lines, without comments or blank lines

Titles, sources, transcribers' notes and other free-text fields are dropped: they are not music and would cost
the model bits it should spend on notes (folk-rnn's second version dropped them too). A blank line ends a tune
in ABC, so tunes joined by one are a corpus a language model reads tune by tune, and a generated tune ends
where the model writes one.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

from .notes import MusicError, Score, score_from_stream

HEADER_ORDER = ("R", "M", "L", "K")  # after X:1; K: is always the last header line in ABC
_FIELD = re.compile(r"^([A-Za-z]):\s*(.*?)\s*$")
_TUNE_START = re.compile(r"^X:", re.M)
_PARSE_LOCK = threading.Lock()
_DOUBLE_REPEAT = re.compile(r"(?<![|:])::(?![|:])")  # ABC's shorthand for :|:


def split_tunes(text: str) -> list[str]:
    """The tunes of an ABC file: each starts at an `X:` line; the file header before the first is dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = [m.start() for m in _TUNE_START.finditer(text)]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def default_unit(metre: str) -> str:
    """ABC's unit note length when L: is absent: 1/16 below a metre of 3/4, else 1/8 (the standard, 3.1.7)."""
    m = metre.strip()
    if m in ("C", "C|"):
        return "1/8"
    try:
        return "1/16" if Fraction(m.split()[0]) < Fraction(3, 4) else "1/8"
    except (ValueError, ZeroDivisionError):
        return "1/8"


def normalise_tune(raw: str) -> tuple[str | None, str]:
    """(the tune in normal form, "ok") or (None, why it was dropped: "no_key", "multivoice", "no_body")."""
    fields: dict[str, str] = {}
    body: list[str] = []
    in_header = True
    for line in raw.replace("\r\n", "\n").split("\n"):
        line = line.rstrip()
        if line.startswith("%"):
            continue  # comments and %% directives
        line = re.sub(r"(?<!\\)%.*$", "", line).rstrip()  # a trailing comment
        if not line:
            if in_header:
                continue
            if body:
                break  # a blank line ends the tune
            continue
        m = _FIELD.match(line)
        if in_header:
            if m is None:
                return None, "no_key"  # music before K:
            name, value = m.group(1).upper(), m.group(2)
            if name == "V":
                return None, "multivoice"
            if name in ("R", "M", "L", "K") and name not in fields:
                fields[name] = value.lower() if name == "R" else re.sub(r"\s+", " ", value)
            if name == "K":
                in_header = False
            continue
        if m is not None:
            if m.group(1) == "V":
                return None, "multivoice"
            if m.group(1) not in ("M", "K", "L"):
                continue  # lyrics (w:, W:), notes, part and section titles: text, not music
        body.append(line)
    if in_header or not fields.get("K"):
        return None, "no_key"
    if not body:
        return None, "no_body"
    fields.setdefault("M", "none")
    fields.setdefault("L", default_unit(fields["M"]))
    head = ["X:1"] + [f"{k}:{fields[k]}" for k in HEADER_ORDER if fields.get(k)]
    return "\n".join(head + body), "ok"


def header_of(tune: str) -> dict[str, str]:
    """The header fields of a tune (up to K:), e.g. {"X": "1", "M": "6/8", "L": "1/8", "K": "D"}."""
    out = {}
    for line in tune.split("\n"):
        m = _FIELD.match(line)
        if m is None:
            break
        out[m.group(1).upper()] = m.group(2)
        if m.group(1).upper() == "K":
            break
    return out


def body_of(tune: str) -> str:
    """What follows the K: line."""
    lines = tune.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("K:"):
            return "\n".join(lines[i + 1:])
    return ""


def prompt_header(prompt: str) -> str:
    """A user's header prompt ("M:6/8\\nK:D\\n", fields in any order) in normal form, ready to be continued:
    X:1 first, the given fields in the normal order, L: written out when M: is given without it (ABC's own
    default, so nothing changes), and body text after K: kept as given. A prompt without K: stays open after its
    last field, for the model to write the rest of the header."""
    text = prompt.replace("\\n", "\n")  # "M:6/8\nK:D" typed in a shell arrives with a literal backslash-n
    lines = text.split("\n")
    fields: dict[str, str] = {}
    rest: list[str] = []
    for i, line in enumerate(lines):
        m = _FIELD.match(line.strip())
        if m is None:  # the first line that is not a field: body text, kept as given
            rest = lines[i:]
            break
        name = m.group(1).upper()
        if name not in ("X", "T"):
            fields[name] = m.group(2).lower() if name == "R" else m.group(2)
    if "K" in fields and "M" in fields and "L" not in fields:
        fields["L"] = default_unit(fields["M"])
    head = ["X:1"] + [f"{k}:{fields[k]}" for k in HEADER_ORDER if fields.get(k)]
    out = "\n".join(head) + "\n"
    if "K" in fields:
        out += "\n".join(rest)
    return out


def parse_abc(tune: str, strict: bool = False):
    """The tune as a music21 Score; MusicError when music21 cannot read it or it holds no notes. music21 reads
    a letter that is no note name as a C with a warning; `strict` (the validity check) refuses such a tune
    instead. Its warnings are kept off stderr (a server would print one per odd tune)."""
    try:
        from music21 import abcFormat, converter
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise MusicError("Reading ABC needs music21. Fix: pip install 'genforge[music]'.") from e
    head, sep, body = tune.partition("\nK:")
    tune = head + sep + _DOUBLE_REPEAT.sub(":|:", body)  # music21 10 drops the note before `::`; same music
    warnings: list = []
    with _PARSE_LOCK:  # the warning hook is module state: one parse at a time swaps it
        env = abcFormat.environLocal
        env_warn, env.warn = env.warn, lambda msg, *a, **k: warnings.append(msg)
        try:
            s = converter.parseData(tune, format="abc")
        except Exception as e:  # music21 raises many kinds on malformed ABC
            raise MusicError(f"does not parse as ABC ({type(e).__name__}: {str(e)[:120]})") from None
        finally:
            env.warn = env_warn
    if type(s).__name__ == "Opus":  # a second X: line inside the text: not one tune
        raise MusicError("holds more than one tune (a second X: line)")
    if not len(s.flatten().notes):
        raise MusicError("holds no notes")
    unknown = [" ".join(map(str, w)) if isinstance(w, (list, tuple)) else str(w) for w in warnings
               if "pitch information" in str(w)]
    if strict and unknown:
        raise MusicError(f"holds a note that is not ABC ({unknown[0].strip()[:80]})")
    return s


def abc_score(tune: str) -> Score:
    """The notes of an ABC tune (MusicError when it does not parse)."""
    try:
        return score_from_stream(parse_abc(tune))
    except MusicError:
        raise
    except Exception as e:
        raise MusicError(f"could not be read as notes ({type(e).__name__}: {str(e)[:120]})") from None

