"""Music models: their entry in /v1/models, and POST /v1/music/render, genforge's extension that turns a tune's
text into something to hear or see. Composing itself is /v1/completions (a music model is a text model; see
routes/completions.py for what differs), so a client asks for a tune there and renders what came back here.

/v1/music/render reads ABC (or note-event text), picks one tune of it, and answers the file itself: WAV, FLAC or
MP3 rendered with the General MIDI soundfont, a piano-roll PNG, MIDI, MusicXML, or the ABC again. When the
request names a model, the file carries that model's provenance record (and a C2PA manifest in audio and PNG when
the server signs); without a model it carries none, since the server did not make the text. Text that is not
music is a 400 that says why; over-long text or music is a 400 naming the limit. Parsing and rendering are CPU
work: they run on one worker thread per app (the soundfont synthesiser is shared, so one render at a time), with
at most `max_render_queue` requests waiting (then 429), never on the event loop.

Nothing here imports torch; music21, symusic and the soundfont come with the `music` extra.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from genforge.music.compose import DEFAULT_TOKENS
from genforge.music.notes import MusicError
from genforge.serving import protocol as p
from genforge.serving.common import ERRORS, ApiError, Server, ServeSettings
from genforge.serving.routes import completions

SAMPLE_RATE = 22050  # the soundfont's detail is far below this rate's limit; half the bytes of 44.1 kHz
MAX_QPM = 240.0  # the length check counts a faster tempo as this one, so a fast tune cannot make a huge piano roll


def formats(kind: str) -> list[str]:
    """What /v1/music/render writes for text of `kind` (ABC text only for ABC)."""
    return [f for f in p.MUSIC_MIME if f != "abc" or kind == "abc"]


def describe(gen, s: ServeSettings) -> p.ModelInfo:
    kind = gen.music_kind
    text = completions.describe(gen, s)  # the completion limits apply as to any text model
    limits = text.limits.model_copy(update={"max_render_chars": s.max_render_chars,
                                            "max_render_seconds": s.max_render_seconds})
    return p.ModelInfo(modality="music", family=text.family, music_kind=kind, response_formats=formats(kind),
                       max_tokens_default=min(DEFAULT_TOKENS.get(kind, 1000), s.max_tokens), limits=limits)


RENDER_RESPONSE = {
    "description": "The file: audio (mono, 22050 Hz, the X-Music-Seconds header gives the music's length), a "
                   "piano-roll PNG, MIDI, MusicXML or ABC text.",
    "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in p.MUSIC_MIME.values()},
}


def router(server: Server) -> APIRouter:
    s = server.settings
    api = APIRouter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genforge-render")
    waiting = 0  # requests queued on or running in the pool

    @api.post("/v1/music/render", response_class=Response, tags=["music"],
              summary="Render a tune's text to audio, a piano roll, MIDI or MusicXML (genforge extension)",
              description="Send the text /v1/completions wrote for a music model (or any ABC tune, or note-event "
                          "text with kind=events); the answer is the file itself. `model` puts that model's "
                          "provenance record in the file; `tune` picks one tune of several. Text that does not read "
                          "as music is a 400 (code not_music); text over max_render_chars characters or music over "
                          "max_render_seconds seconds (see /v1/models) a 400 (code limit).",
              responses={**ERRORS, 200: RENDER_RESPONSE}, dependencies=[Depends(server.require_key)])
    async def render(req: p.MusicRenderRequest):
        nonlocal waiting
        gen = server.model_of(req.model, "music") if req.model is not None else None
        kind = req.kind or (gen.music_kind if gen is not None else "abc")
        if len(req.text) > s.max_render_chars:
            raise ApiError(400, f"text: at most {s.max_render_chars} characters on this server; got {len(req.text)}. "
                           "Fix: send one tune.", param="text", code="limit")
        if req.format not in formats(kind):
            raise ApiError(400, f"format: {kind} text has no ABC form; use {', '.join(formats(kind))}.",
                           param="format")
        if req.seed is not None and gen is None:
            raise ApiError(400, "seed: only recorded with `model` (the model that wrote the text); name it or omit "
                           "the seed.", param="seed")
        record = None
        if gen is not None:
            record = gen.record(req.seed, marked=False, kind=kind, tune=req.tune, format=req.format)
        if waiting >= s.max_render_queue:
            raise ApiError(429, f"{waiting} renders are waiting; retry in a second.", "rate_limit_error", None,
                           "queue_full", {"Retry-After": "1"})
        waiting += 1
        try:
            job = asyncio.get_running_loop().run_in_executor(pool, render_file, req.text, kind, req.tune,
                                                             req.format, record, server.signer, s.max_render_seconds)
            data, score = await asyncio.wait_for(job, s.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"The render took longer than the server's {s.timeout_s:g} s limit. Fix: render a "
                           "shorter tune.", "timeout", None, "timeout") from None
        finally:
            waiting -= 1
        headers = {"X-Music-Seconds": f"{score.seconds:.3f}", "X-Music-Notes": str(len(score.notes)),
                   "Content-Disposition": f'inline; filename="tune.{req.format}"'}
        return Response(data, media_type=p.MUSIC_MIME[req.format], headers=headers)

    return api


def pick(text: str, kind: str, tune: int) -> str:
    """Tune number `tune` (from 1) of the text: ABC tunes start at X: lines (text without one is one tune),
    event pieces are separated by blank lines."""
    if kind == "abc":
        from genforge.music.abc import split_tunes

        pieces = [t.strip("\n") for t in split_tunes(text)] or [text.strip("\n")]
    else:
        pieces = [t.strip("\n") for t in re.split(r"\n[ \t]*\n", text) if t.strip()]
    pieces = [t for t in pieces if t.strip()]
    if not pieces:
        raise ApiError(400, "text: empty; send a tune (ABC starts with header lines such as X:1, M:6/8, K:D).",
                       param="text", code="not_music")
    if tune > len(pieces):
        raise ApiError(400, f"tune: the text holds {len(pieces)} tune{'s' * (len(pieces) != 1)}; got tune={tune}.",
                       param="tune")
    return pieces[tune - 1]


def render_file(text: str, kind: str, tune: int, fmt: str, record, signer, max_seconds: float):
    """On the render thread: (the file's bytes, the tune's Score). Every failure is an ApiError (a 400)."""
    from genforge.music.validity import read_score

    piece = pick(text, kind, tune)
    what = "ABC" if kind == "abc" else "note events"
    try:
        score = read_score(piece, kind)
    except Exception as e:  # noqa: BLE001 - music21 raises many kinds on text that is not music: the client's text
        reason = str(e) if isinstance(e, MusicError) else f"{type(e).__name__}: {str(e)[:120]}"
        raise ApiError(400, f"text: does not read as {what} ({reason}).", param="text", code="not_music") from None
    if not score.notes:
        raise ApiError(400, f"text: the {what} hold no notes.", param="text", code="not_music")
    seconds = score.end * 60.0 / min(score.qpm, MAX_QPM)
    if seconds > max_seconds:
        raise ApiError(400, f"text: {seconds:.0f} s of music; at most {max_seconds:g} s on this server. Fix: render "
                       "a shorter tune.", param="text", code="limit")
    try:
        return encode(piece, score, kind, fmt, record, signer), score
    except MusicError as e:
        raise ApiError(400, f"text: cannot be written as {fmt} ({e}).", param="text", code="not_music") from None


def encode(piece: str, score, kind: str, fmt: str, record, signer) -> bytes:
    from genforge.media import music

    if fmt == "abc":
        return ((music.abc_with_record(piece, record) if record is not None else piece) + "\n").encode()
    if fmt == "musicxml":
        if kind == "abc":
            from genforge.music.abc import parse_abc

            stream = parse_abc(piece)  # keeps the tune's bars, ties and title
        else:
            from genforge.music.events import events_to_stream

            stream = events_to_stream(piece)
        return music.musicxml_bytes(stream, record)
    if fmt == "mid":
        return music.score_to_midi(score, record)
    if fmt == "png":
        return music.piano_roll_png(score, None, record, signer)
    from genforge.media.audio import encode_audio

    clip = music.render_audio(score, SAMPLE_RATE)
    return encode_audio(clip, SAMPLE_RATE, fmt, record, signer)
