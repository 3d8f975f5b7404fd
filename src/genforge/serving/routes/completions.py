"""POST /v1/completions: OpenAI's text completions, whole or as server-sent events. Every row of a request is a
`TextJob` made by the model's own `jobs(...)` (torch's generator or the runtime's, whichever is served); the
model's batcher decodes rows of many requests together.

Music models are text models (their text is ABC or note events) and are served here too, with three differences
that keep the music what the model learnt: each prompt goes through the model's `piece_prompt` (ABC header fields
in any order, "M:6/8\nK:D", become the tune start "X:1\nM:6/8\nL:1/8\nK:D\n"; `echo` returns that normalised
prompt and its continuation, i.e. the whole tune); `stop` defaults to a blank line, the end of a piece; and the
text mark is never applied (biasing tokens would change the music). /v1/music/render turns the text into audio,
a piano roll, MIDI or MusicXML."""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from genforge.errors import UserError
from genforge.music.compose import PIECE_END
from genforge.serving import protocol as p
from genforge.serving.batching import Pending
from genforge.serving.common import (
    ERRORS,
    ApiError,
    Server,
    ServeSettings,
    error_body,
    random_seed,
)
from genforge.text_jobs import TextJob


def describe(gen, s: ServeSettings) -> p.ModelInfo:
    return p.ModelInfo(modality="text", family=gen.meta.get("family", "?"),
                       limits=p.ModelLimits(max_n=min(s.max_n, s.max_batch), max_rows=s.max_batch,
                                            max_tokens=s.max_tokens, max_prompt_tokens=s.max_prompt_tokens))


def router(server: Server) -> APIRouter:
    s, metrics = server.settings, server.metrics
    api = APIRouter()

    @api.post("/v1/completions", response_model=p.CompletionResponse, tags=["generation"],
              summary="Continue a prompt (OpenAI completions; stream=true for server-sent events)",
              description="Text and music models. For a music model the prompt is put in the model's normal form "
                          "(ABC header fields such as 'M:6/8\\nK:D' become 'X:1\\nM:6/8\\nL:1/8\\nK:D\\n'; echo "
                          "returns it with the continuation: the whole tune), `stop` defaults to a blank line (the "
                          "end of a tune), and the text mark is never applied (it would change the music).",
              responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
              dependencies=[Depends(server.require_key)])
    async def completions(req: p.CompletionRequest, request: Request):
        gen = server.model_of(req.model, "text", "music")
        music = gen.modality == "music"
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if music:  # the tune start the model learnt, checked as sent and as the model reads it
            check(req, prompts, gen, s)
            prompts = [gen.piece_prompt(prompt) for prompt in prompts]
        check(req, prompts, gen, s)
        seed = req.seed if req.seed is not None else random_seed()
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if music and req.stop is None:
            stop = [PIECE_END]  # a blank line ends a piece
        pending = Pending(jobs=[], rows=len(prompts) * req.n, key="text", stream=bool(req.stream))
        pending.jobs = gen.jobs([prompt for prompt in prompts for _ in range(req.n)], req.max_tokens, req.temperature,
                                req.top_k, None if req.top_p >= 1.0 else req.top_p, seed, stop,
                                mark=req.mark and not music)
        for job in pending.jobs:
            job.cancelled = lambda: pending.cancelled
        deadline = server.deadline()
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        server.submit(req.model, pending)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            record = provenance(gen, req, seed, stop, pending)
            return StreamingResponse(stream(pending, request, deadline, rid, req, include_usage, record),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts = [""] * len(pending.jobs)
        while True:
            kind, value = await server.next_event(pending, request, deadline)
            if kind == "pieces":
                for i, piece in enumerate(value[0]):
                    if piece:
                        texts[i] += piece
            elif kind == "error":
                raise value
            else:
                break
        usage = usage_of(pending.jobs, req.n, req.model)
        choices = [p.CompletionChoice(index=i, text=(job.prompt if req.echo else "") + texts[i],
                                      finish_reason="stop" if job.finish_reason == "stop" else "length")
                   for i, job in enumerate(pending.jobs)]
        return p.CompletionResponse(id=rid, model=req.model, choices=choices, usage=usage,
                                    provenance=provenance(gen, req, seed, stop, pending))

    def provenance(gen, req, seed: int, stop: list[str], pending: Pending) -> dict:
        """What made the text; `mark` names the key only when the text carries the mark (greedy decoding
        samples nothing, so it carries none)."""
        marked = pending.jobs[0].mark is not None and req.temperature > 0
        return gen.record(seed, marked=marked, max_tokens=req.max_tokens, temperature=req.temperature,
                          top_k=req.top_k, top_p=req.top_p, n=req.n, stop=stop or None).as_dict()

    def usage_of(jobs: list[TextJob], n: int, model: str) -> p.Usage:
        prompt = sum(job.prompt_tokens for job in jobs[::n])  # each prompt counted once, as OpenAI does
        completion = sum(job.completion_tokens for job in jobs)
        metrics.prompt_tokens.labels(model).inc(prompt)
        return p.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def stream(pending: Pending, request: Request, deadline: float, rid: str, req, include_usage, record):
        created_at = int(time.time())

        def chunk(choices, **extra) -> str:
            body = {"id": rid, "object": "text_completion", "created": created_at, "model": req.model,
                    "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        def reason(i: int) -> str:
            return "stop" if pending.jobs[i].finish_reason == "stop" else "length"

        try:
            if req.echo:
                yield chunk([{"index": i, "text": job.prompt, "logprobs": None, "finish_reason": None}
                             for i, job in enumerate(pending.jobs)])
            while True:
                try:
                    kind, value = await server.next_event(pending, request, deadline)
                except ApiError as e:
                    yield f"data: {json.dumps(error_body(e.message, e.type, e.param, e.code))}\n\n"
                    break
                if kind == "error":
                    e = value
                    status_type = "invalid_request_error" if isinstance(e, UserError) else "server_error"
                    yield f"data: {json.dumps(error_body(str(e), status_type))}\n\n"
                    break
                if kind == "pieces":  # a row's last piece carries its finish reason, as OpenAI's do
                    pieces, finished = value
                    yield chunk([{"index": i, "text": piece or "", "logprobs": None,
                                  "finish_reason": reason(i) if i in finished else None}
                                 for i, piece in enumerate(pieces) if piece or i in finished])
                else:
                    usage = usage_of(pending.jobs, req.n, req.model)
                    # the last event says what made the text and whether it carries the keyed mark
                    yield chunk([], **({"usage": usage.model_dump()} if include_usage else {}), provenance=record)
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not all(job.ended for job in pending.jobs):
                pending.cancelled = True  # the client left (or the stream failed): free the rows

    return api


def check(req: p.CompletionRequest, prompts: list[str], gen, s: ServeSettings) -> None:
    """The server's limits on a completion request, each a 400 naming its field."""
    def bad(param: str, message: str):
        raise ApiError(400, f"{param}: {message}", param=param, code="limit")

    unsupported = {"logprobs": req.logprobs is not None, "suffix": req.suffix is not None,
                   "logit_bias": bool(req.logit_bias), "best_of": req.best_of not in (None, 1),
                   "presence_penalty": req.presence_penalty != 0, "frequency_penalty": req.frequency_penalty != 0}
    for name, used in unsupported.items():
        if used:
            raise ApiError(400, f"{name}: not supported by genforge models; omit it.", param=name, code="unsupported")
    if not prompts:
        bad("prompt", "give at least one prompt.")
    if req.n > s.max_n:
        bad("n", f"at most {s.max_n} choices per prompt on this server; got {req.n}.")
    if len(prompts) * req.n > s.max_batch:
        bad("prompt", f"{len(prompts)} prompts x n={req.n} = {len(prompts) * req.n} rows; at most {s.max_batch} per request.")
    if req.max_tokens > s.max_tokens:
        bad("max_tokens", f"at most {s.max_tokens} on this server; got {req.max_tokens}.")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > s.max_stop:
        bad("stop", f"at most {s.max_stop} stop strings; got {len(stops)}.")
    if any(len(x) > s.max_stop_chars for x in stops):
        bad("stop", f"each stop string at most {s.max_stop_chars} characters.")
    for prompt in prompts:
        if len(prompt) > s.max_prompt_tokens * 16:  # no tokenizer makes fewer tokens than chars / 16
            bad("prompt", f"at most {s.max_prompt_tokens} tokens per prompt; got {len(prompt)} characters.")
        tokens = len(gen.tokenizer.encode(prompt))
        if tokens > s.max_prompt_tokens:
            bad("prompt", f"at most {s.max_prompt_tokens} tokens per prompt; got {tokens}.")
