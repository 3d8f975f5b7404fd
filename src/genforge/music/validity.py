"""Is a generated piece music? It parses, and its bars fit its metre.

The piece parses (ABC through music21, event text through the event codec) and its bars match the metre.
Exempt from the length check: the first bar (a pickup) and the last; a bar beside a section boundary (a repeat
sign, an ending bracket, a double or final bar line), which is conventionally short because its complement sits
on the other side of the repeat; and a run of consecutive short bars that adds up to one full bar (a bar split by
a bar line). A bar longer than the metre always fails (music21 reads an overfull ABC bar as a full bar plus an
extra one with a time signature of its own: the two are joined back). M:none, and tunes whose metre changes
mid-tune, have no bar check. Torch-free: the runtime and the server check pieces too.
"""

from __future__ import annotations

import re

from .notes import MusicError, Score, score_from_stream

EPS = 1e-6
_INLINE_METRE = re.compile(r"(^|\[)M:", re.MULTILINE)



def _bar_problem(lengths: list[float], full: float, boundary: set[int]) -> str | None:
    """Why these bars do not match a metre of `full` quarters, or None; `boundary` holds the bars that touch a
    section boundary."""
    n = len(lengths)
    for i in range(n):
        if lengths[i] > full + EPS:
            return f"bar {i + 1} is longer than the metre's {full:g} quarter notes"
    i = 1
    while i < n - 1:
        if abs(lengths[i] - full) <= EPS:
            i += 1
            continue
        j = i  # a run of short bars i..j-1
        while j < n - 1 and lengths[j] < full - EPS:
            j += 1
        run = range(i, j)
        if not (abs(sum(lengths[k] for k in run) - full) <= EPS or any(k in boundary for k in run)):
            return (f"bar {i + 1} holds {lengths[i]:g} of the metre's {full:g} quarter notes, away from a "
                    "repeat or section end")
        i = j
    return None


def _abc_bars(stream) -> tuple[list[float], set[int]]:
    """(the written bars' lengths, the bars at a section boundary). music21 splits an overfull bar, the part
    beyond the metre becoming a bar of its own with its own time signature: such parts are joined back."""
    from music21 import bar as m21bar
    from music21 import spanner
    from music21 import stream as m21stream

    part = stream.parts[0] if len(stream.parts) else stream
    measures = list(part.getElementsByClass(m21stream.Measure))
    first = next((m.timeSignature.ratioString for m in measures if m.timeSignature is not None), None)

    def marked(b) -> bool:
        return b is not None and (isinstance(b, m21bar.Repeat) or b.type not in ("regular", None))

    lengths: list[float] = []
    boundary: set[int] = set()
    for m in measures:
        ts = m.timeSignature
        if lengths and ts is not None and ts.ratioString != first:
            lengths[-1] += float(m.duration.quarterLength)  # the overflow of the bar before
        else:
            lengths.append(float(m.duration.quarterLength))
        i = len(lengths) - 1
        if marked(m.rightBarline):
            boundary.update((i, i + 1))
        if marked(m.leftBarline):
            boundary.update((i - 1, i))
        if any(isinstance(s, spanner.RepeatBracket) for s in m.getSpannerSites()):
            boundary.update((i - 1, i, i + 1))  # an ending's first and last bars, and the bars beside it
    return lengths, boundary


def check_piece_text(text: str, kind: str) -> tuple[dict, Score | None]:
    """validity()'s verdict and the piece's Score (None when it does not parse)."""
    if kind == "abc":
        from genforge.music.abc import parse_abc
        head, sep, body = text.partition("\nK:")
        try:
            stream = parse_abc(head + sep + body, strict=True)
            score = score_from_stream(stream)
        except MusicError as e:
            return {"parses": False, "metre_ok": False, "reason": str(e)}, None
        except Exception as e:  # noqa: BLE001 - music21 fails in many ways on odd ABC
            return {"parses": False, "metre_ok": False, "reason": f"{type(e).__name__}: {str(e)[:120]}"}, None
        full = score.bar_quarters()
        if full is None:
            return {"parses": True, "metre_ok": True, "reason": "ok (no metre)"}, score
        lengths, boundary = _abc_bars(stream)
        if _INLINE_METRE.search(body.partition("\n")[2]):
            # the metre changes inside the tune: music21's signatures are the written ones, not overflow marks
            return {"parses": True, "metre_ok": True, "reason": "ok (metre changes, bars not checked)"}, score
        problem = _bar_problem(lengths, full, boundary)
    elif kind == "events":
        from genforge.music.events import events_to_score
        try:
            score = events_to_score(text)
        except MusicError as e:
            return {"parses": False, "metre_ok": False, "reason": str(e)}, None
        full = score.bar_quarters()
        if full is None or not score.bars:
            return {"parses": True, "metre_ok": True, "reason": "ok (no metre)"}, score
        problem = _bar_problem([b[1] for b in score.bars], full, set())
    else:
        raise ValueError(f"kind must be 'abc' or 'events', not {kind!r}")
    if problem:
        return {"parses": True, "metre_ok": False, "reason": problem}, score
    return {"parses": True, "metre_ok": True, "reason": "ok"}, score


def validity(text: str, kind: str = "abc") -> dict:
    """{"parses", "metre_ok", "reason"} for one generated piece (ABC tune or event text)."""
    return check_piece_text(text, kind)[0]


def is_valid(text: str, kind: str = "abc") -> bool:
    v = validity(text, kind)
    return v["parses"] and v["metre_ok"]


def read_score(text: str, kind: str) -> Score:
    """The notes of a piece's text, ABC or events (MusicError when it is not music)."""
    if kind == "abc":
        from .abc import abc_score
        return abc_score(text)
    from .events import events_to_score
    return events_to_score(text)
