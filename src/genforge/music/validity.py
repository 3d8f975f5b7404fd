"""Is a generated piece music? It parses, and its bars fit its metre.

The bar check follows how real tunes are written: a full bar has the time signature's length; the first bar may
be a pickup and the last may be short; a bar split by a repeat sign or a section break (`|:` in mid-bar) is a run
of short bars that add up to one full bar. A bar longer than the metre, or short bars that add up to nothing
sensible, fail. Tunes in free metre (M:none) have no bar check. Torch-free: the runtime checks pieces too.
"""

from __future__ import annotations

from .notes import MusicError, Score

TOLERANCE = 1e-6


def bars_fit(bars: list[tuple[float, float | None]]) -> tuple[bool, str]:
    """(True, "ok") when every bar [(length, the metre's full bar or None)] fits as described above, else
    (False, which bar and why)."""
    last = len(bars) - 1
    pending = 0.0  # short bars so far in a run that should add up to a full bar
    for i, (length, full) in enumerate(bars):
        if full is None:
            pending = 0.0
            continue
        if length > full + TOLERANCE:
            return False, f"bar {i + 1} is {length:g} quarter notes long, more than the metre's {full:g}"
        if abs(length - full) <= TOLERANCE:
            if pending > TOLERANCE:
                return False, f"bar {i} is short ({pending:g} of {full:g} quarter notes)"
            continue
        if i == 0 or i == last:
            continue  # a pickup, or a short last bar
        pending += length
        if abs(pending - full) <= TOLERANCE:
            pending = 0.0
        elif pending > full + TOLERANCE:
            return False, f"bars around bar {i + 1} add up to {pending:g} quarter notes, not {full:g}"
    if pending > TOLERANCE:  # a short bar just before the end: only with the last bar may it make a full one
        length, full = bars[last]
        if full is None or abs(pending + length - full) > TOLERANCE:
            return False, f"a short bar ({pending:g} quarter notes) before the end"
    return True, "ok"


def read_score(text: str, kind: str) -> Score:
    if kind == "abc":
        from .abc import abc_score
        return abc_score(text)
    from .events import events_to_score
    return events_to_score(text)


def validity(text: str, kind: str) -> dict:
    """{"parses", "metre_ok", "reason"} for a piece's text, `kind` "abc" or "events"."""
    try:
        score = read_score(text, kind)
    except MusicError as e:
        return {"parses": False, "metre_ok": False, "reason": str(e)}
    if not score.notes:
        return {"parses": False, "metre_ok": False, "reason": "holds no notes"}
    if kind == "abc":
        from .abc import abc_bars
        bars = abc_bars(text)
    else:
        full = score.bar_quarters()
        bars = [(length, full) for _, length in score.bars]
    ok, why = bars_fit(bars)
    return {"parses": True, "metre_ok": ok, "reason": why}


def is_valid(text: str, kind: str) -> bool:
    v = validity(text, kind)
    return v["parses"] and v["metre_ok"]
