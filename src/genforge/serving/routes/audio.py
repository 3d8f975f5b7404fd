"""POST /v1/audio/speech: OpenAI's text to speech, for models of spoken digits. The answer is the audio file
itself (WAV, FLAC, MP3, or raw 16-bit PCM), written by `media.encode_audio` with the provenance record, a C2PA
manifest when the server signs, and the keyed mark when it has a key.

A request is read in two halves, so that the model's batcher can merge requests as it merges image requests:
`gen.speech_job(text, speaker, speed, seed, **options)` parses the text and draws every digit's randomness (a
job of one clip per digit, which `gen.run` renders beside other requests' jobs with the same options), and
`gen.finish_speech(job, clips)` trims, joins and marks the clips. The route asks nothing else of a model than
`modality`, `voices`, `sample_rate`, `classes`, `options()`, those two and `record()`, so a `genforge.load`
run and a torch-free export (runtime) are served alike.
"""

from __future__ import annotations


from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from genforge.audio.speech import MAX_DIGITS
from genforge.errors import UserError
from genforge.media.audio import MP3_RATES, encode_audio
from genforge.serving import protocol as p
from genforge.serving.batching import Pending
from genforge.serving.common import ERRORS, ApiError, Server, ServeSettings, random_seed


def voices(gen) -> list[str]:
    """What a request may name: the model's voices, and always 'default' (the model's choice)."""
    names = [str(v) for v in gen.voices]
    return names if "default" in names else [*names, "default"]


def formats(gen) -> list[str]:
    """The response formats this model's clips can be written in (MP3 holds only its standard rates)."""
    return [f for f in p.SPEECH_FORMATS if f != "mp3" or int(gen.sample_rate) in MP3_RATES]


def max_digits(s: ServeSettings) -> int:
    return min(MAX_DIGITS, s.max_batch)  # a request's digits are rows of one batch


def describe(gen, s: ServeSettings) -> p.ModelInfo:
    return p.ModelInfo(modality="audio", family=str(gen.meta.get("family", "?")), classes=list(gen.classes),
                       conditional=bool(getattr(gen, "conditional", bool(gen.classes))), voices=voices(gen),
                       sample_rate=int(gen.sample_rate), response_formats=formats(gen), options=gen.options(),
                       limits=p.ModelLimits(max_n=1, max_rows=s.max_batch, max_audio_calls=s.max_audio_calls,
                                            max_digits=max_digits(s), max_input_chars=s.max_input_chars))


AUDIO_RESPONSE = {
    "description": "The audio file: one mono clip at the model's sample rate (also in the X-Sample-Rate header). "
                   "pcm is raw 16-bit little-endian samples without a header.",
    "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in p.SPEECH_MIME.values()},
}


def router(server: Server) -> APIRouter:
    metrics = server.metrics
    api = APIRouter()

    @api.post("/v1/audio/speech", response_class=Response, tags=["generation"],
              summary="Read digits aloud (OpenAI speech; the audio file in the body)",
              responses={**ERRORS, 200: AUDIO_RESPONSE}, dependencies=[Depends(server.require_key)])
    async def speech(req: p.SpeechRequest, request: Request):
        gen = server.model_of(req.model, "audio")
        job, voice, seed = make_job(req, gen, server)
        pending = Pending(jobs=[job], rows=job.n, key=("speech", tuple(sorted(job.options.items()))))
        clips = await server.render(req.model, pending, request)
        clip = await server.off_loop(gen.finish_speech, job, clips)
        rate = int(gen.sample_rate)
        record = gen.record(seed, voice=voice, speed=req.speed, digits=job.n, **job.options)
        fmt = req.response_format
        data = await server.off_loop(encode_audio, clip, rate, fmt, record, server.signer)
        metrics.audio_seconds.labels(req.model).inc(len(clip) / rate)
        headers = {"X-Sample-Rate": str(rate), "X-Seed": str(seed),
                   "Content-Disposition": f'inline; filename="speech.{fmt}"'}
        if fmt == "pcm":
            headers.update({"X-Sample-Format": "s16le", "X-Channels": "1"})
        return Response(data, media_type=p.SPEECH_MIME[fmt], headers=headers)

    return api


def make_job(req: p.SpeechRequest, gen, server: Server):
    """The request checked against the server's limits and the model, as (the digits' job, voice, seed); each
    mistake a 400 naming its field."""
    s = server.settings
    if req.instructions:
        raise ApiError(400, "instructions: not supported by genforge's speech models (they read digits in the "
                       "voice asked for); omit it.", param="instructions", code="unsupported")
    if req.stream_format == "sse":
        raise ApiError(400, "stream_format: only 'audio' (the whole file in the body) is served; omit it.",
                       param="stream_format", code="unsupported")
    if len(req.input) > s.max_input_chars:
        raise ApiError(400, f"input: at most {s.max_input_chars} characters on this server; got {len(req.input)}.",
                       param="input", code="limit")
    voice = req.voice.id if isinstance(req.voice, p.VoiceRef) else req.voice
    known = voices(gen)
    if voice not in known:
        raise ApiError(400, f"voice: '{voice[:40]}' is not a voice of '{req.model}'. Its voices: {', '.join(known)}.",
                       param="voice", code="unknown_voice")
    if req.response_format not in formats(gen):
        raise ApiError(400, f"response_format: MP3 cannot hold this model's {gen.sample_rate} Hz audio; use "
                       f"{', '.join(formats(gen))}.", param="response_format")
    options = server.family_options(req.model_extra, gen, req.model, "input, voice, speed and seed")
    seed = req.seed if req.seed is not None else random_seed()
    try:
        job = gen.speech_job(req.input, speaker=voice, speed=req.speed, seed=seed, **options)
    except UserError as e:
        param = next((k for k in options if k in str(e)), "input")
        raise ApiError(400, f"{param}: {e}", param=param) from None
    limit = max_digits(s)
    if job.n > limit:
        raise ApiError(400, f"input: at most {limit} digits per request on this server; got {job.n}. Fix: split "
                       "the text into shorter requests.", param="input", code="limit")
    if job.calls > s.max_audio_calls:
        per_digit = max(1, job.calls // job.n)
        raise ApiError(400, f"input x steps: {job.n} digits at {per_digit} network calls each cost {job.calls}, over "
                       f"this server's {s.max_audio_calls} per request. Fix: read at most "
                       f"{max(1, s.max_audio_calls // per_digit)} digits per request, or fewer sampler steps.",
                       param="input", code="limit")
    return job, voice, seed
