"""The HTTP routes: translate OpenAI-shaped requests into library jobs, queue them on the model's batcher,
and translate results (or `UserError`s) back. Every refusal is a 4xx in OpenAI's error shape naming the
field and the limit; nothing a client sends should produce a 5xx.

Open routes: `/`, `/static/*` (the playground), `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`.
Every `/v1/*` route needs a key when the server has keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.text_jobs import TextJob
from genforge.errors import UserError
from genforge.media import Signer, encode
from genforge.serving import protocol as p
from genforge.serving.auth import authorized
from genforge.serving.batching import Batcher, Pending, QueueFull
from genforge.serving.metrics import Metrics

STATIC = resources.files("genforge.serving") / "static"


@dataclass
class ServeSettings:
    """Batching and limits; every limit is reported per model in /v1/models."""

    max_batch: int = 32  # rows (images or text choices) per forward pass; also the most one request may ask for
    max_wait_ms: float = 10.0  # how long a batch waits for company
    max_queue: int = 64  # requests waiting per model before 429
    timeout_s: float = 120.0  # per request, queue wait included
    max_body_bytes: int = 2 * 1024 * 1024
    max_n: int = 16  # choices per prompt
    max_images: int = 64
    # network forward passes one image request may cost, counted in images (n x sampler steps, x2 when guided):
    # a one-pass GAN or VAE is far inside it; it stops a 1,000-step DDPM batch from holding the model for minutes
    max_image_calls: int = 4096
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_stop: int = 4
    max_stop_chars: int = 64
    api_keys: list[str] = field(default_factory=list)
    mark: bool = True  # the keyed marks, when a key is set ($GENFORGE_MARK_KEY_FILE / $GENFORGE_MARK_KEY)
    sign_cert: str | None = None  # PEM chain and key for a C2PA manifest in every image
    sign_key: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = status, message, type, param, code, headers


def _error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error(status: int, message: str, type: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(_error_body(message, type, param, code), status_code=status, headers=headers)


ERRORS = {status: {"model": p.ErrorResponse, "description": text} for status, text in {
    400: "Invalid request: the message names the field and the limit.",
    401: "Missing or wrong API key (only when the server has keys).",
    404: "Unknown model.",
    413: "Request body over the size limit.",
    429: "The model's queue is full; retry after the Retry-After header's seconds.",
    504: "The request took longer than the server's per-request timeout.",
}.items()}


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before any route sees it (by
    its Content-Length, or by counting a chunked body)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the server's own would

        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps(_error_body(f"Request body over {self.limit} bytes. Fix: send less (fewer or shorter "
                                      "prompts).", "invalid_request_error", None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class Observe:
    """ASGI middleware: request counts by route and status, latency to the last byte (streams included)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", None) or ("static" if scope["path"].startswith("/static/") else "other")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _model_entry(name: str, gen, s: ServeSettings, created: int) -> p.Model:
    meta = gen.meta
    if gen.modality == "image":
        h, w, c = gen.image_shape
        info = p.ModelInfo(modality="image", family=meta.get("family", "?"), classes=list(gen.classes),
                           conditional=gen.conditional, image_size=f"{w}x{h}", channels=c, options=gen.options(),
                           limits=p.ModelLimits(max_n=min(s.max_images, s.max_batch), max_rows=s.max_batch,
                                                max_image_calls=s.max_image_calls))
    else:
        info = p.ModelInfo(modality="text", family=meta.get("family", "?"),
                           limits=p.ModelLimits(max_n=min(s.max_n, s.max_batch), max_rows=s.max_batch,
                                                max_tokens=s.max_tokens, max_prompt_tokens=s.max_prompt_tokens))
    return p.Model(id=name, created=created, genforge=info)


def create_app(models: dict, settings: ServeSettings | None = None) -> FastAPI:
    """The server for already loaded generators ({name: ImageGenerator | TextGenerator})."""
    s = settings or ServeSettings()
    metrics = Metrics()
    if not s.mark:
        for gen in models.values():
            gen.use_mark_key(False)
    signer = Signer.from_files(s.sign_cert, s.sign_key) if s.sign_cert and s.sign_key else None
    created = int(time.time())
    state = {"ready": False, "draining": False}
    batchers: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(app):
        own = {name: Batcher(name, gen, s.max_batch, s.max_wait_ms / 1000, s.max_queue, metrics)
               for name, gen in models.items()}
        for b in own.values():
            b.start()
        batchers.update(own)
        _watch_sigterm(state)
        state["ready"] = True
        yield
        state["ready"] = False
        for b in own.values():  # this lifespan's: a test harness may run the app's lifespan more than once
            await b.stop()

    app = FastAPI(title="genforge", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API for genforge models: /v1/models, /v1/completions, "
                              "/v1/images/generations. Send `Authorization: Bearer KEY` when the server has keys.")
    app.state.settings, app.state.metrics, app.state.batchers = s, metrics, batchers

    # -- errors: OpenAI's shape everywhere -------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return _error(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(UserError)
    async def user_error(request, e: UserError):
        return _error(400, str(e), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = loc[0] if loc else None  # the request field (deeper parts name union members, not fields)
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "unknown field; remove it (see /docs for the fields this route takes)"
        elif first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        return _error(400, f"{param or 'body'}: {msg}.", "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return _error(e.status_code, f"{request.method} {request.url.path}: {e.detail}.", kind,
                      headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request, e: Exception):  # a bug: answered in the same shape, the server stays up
        return _error(500, f"Internal error ({type(e).__name__}); the server is still up.", "server_error")

    # -- auth ------------------------------------------------------------------------------------------------
    async def require_key(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), s.api_keys):
            raise ApiError(401, "Missing or invalid API key. Send the header `Authorization: Bearer KEY`.",
                           "authentication_error", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    def model_of(name: str, modality: str):
        if name not in models:
            raise ApiError(404, f"The model '{name}' does not exist. Models here: {', '.join(models)}.",
                           "not_found_error", "model", "model_not_found")
        gen = models[name]
        if gen.modality != modality:
            route = "/v1/completions" if gen.modality == "text" else "/v1/images/generations"
            raise ApiError(400, f"'{name}' is a {gen.modality} model; use {route}.", param="model",
                           code="wrong_modality")
        return gen

    def submit(name: str, pending: Pending) -> None:
        try:
            batchers[name].submit(pending)
        except QueueFull as e:
            metrics.rejected.labels(name).inc()
            raise ApiError(429, str(e), "rate_limit_error", None, "queue_full",
                           {"Retry-After": str(e.retry_after)}) from None

    async def next_event(pending: Pending, request: Request, deadline: float):
        """The next result event; cancels the request (freeing its rows) on timeout or client disconnect."""
        loop = asyncio.get_running_loop()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                pending.cancelled = True
                raise ApiError(504, f"The request took longer than the server's {s.timeout_s:g} s limit. Fix: ask "
                               "for fewer tokens or images, or retry when the server is less busy.", "timeout",
                               None, "timeout")
            try:
                return await asyncio.wait_for(pending.events.get(), min(left, 0.25))
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    pending.cancelled = True  # its rows end at their next token
                    raise ApiError(499, "The client closed the request.", "client_closed", None, "client_closed")

    # -- open routes -----------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=p.Health, tags=["health"], summary="Alive (open, no key needed)")
    async def healthz():
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/readyz", response_model=p.Ready, tags=["health"], summary="Models loaded and not draining (open)",
             responses={503: {"model": p.ErrorResponse, "description": "Starting or draining."}})
    async def readyz():
        if not state["ready"] or state["draining"]:
            return _error(503, "Not ready: starting up or draining for shutdown.", "unavailable")
        return {"status": "ready", "models": list(models)}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (open)",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics_route():
        body, ctype = metrics.exposition()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # -- /v1 ---------------------------------------------------------------------------------------------------
    v1 = dict(dependencies=[Depends(require_key)], responses=ERRORS)

    @app.get("/v1/models", response_model=p.ModelList, tags=["models"], summary="The models served", **v1)
    async def list_models():
        return p.ModelList(data=[_model_entry(n, g, s, created) for n, g in models.items()])

    @app.get("/v1/models/{model}", response_model=p.Model, tags=["models"], summary="One model", **v1)
    async def get_model(model: str):
        if model not in models:
            raise ApiError(404, f"The model '{model}' does not exist. Models here: {', '.join(models)}.",
                           "not_found_error", "model", "model_not_found")
        return _model_entry(model, models[model], s, created)

    @app.post("/v1/completions", response_model=p.CompletionResponse, tags=["generation"],
              summary="Continue a prompt (OpenAI completions; stream=true for server-sent events)",
              responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
              dependencies=[Depends(require_key)])
    async def completions(req: p.CompletionRequest, request: Request):
        gen = model_of(req.model, "text")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        _check_completion(req, prompts, gen, s)
        seed = req.seed if req.seed is not None else int(torch.seed() % 2**63)
        pending = Pending(jobs=[], rows=len(prompts) * req.n, key="text")
        rng = torch.Generator().manual_seed(seed)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        text_mark = gen.text_mark(gen.tokenizer.vocab_size) if req.mark else None
        pending.jobs = [TextJob(prompt, req.max_tokens, req.temperature, req.top_k,
                                None if req.top_p >= 1.0 else req.top_p, stop, rng, lambda: pending.cancelled,
                                mark=text_mark)
                        for prompt in prompts for _ in range(req.n)]
        deadline = asyncio.get_running_loop().time() + s.timeout_s
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        submit(req.model, pending)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(pending, request, deadline, rid, req, prompts, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts = [""] * len(pending.jobs)
        while True:
            kind, value = await next_event(pending, request, deadline)
            if kind == "pieces":
                for i, piece in enumerate(value):
                    if piece:
                        texts[i] += piece
            elif kind == "error":
                raise value
            else:
                break
        usage = _usage(pending.jobs, req.n, req.model)
        choices = [p.CompletionChoice(index=i, text=(job.prompt if req.echo else "") + texts[i],
                                      finish_reason="stop" if job.finish_reason == "stop" else "length")
                   for i, job in enumerate(pending.jobs)]
        record = gen.record(seed, marked=text_mark is not None, max_tokens=req.max_tokens, temperature=req.temperature,
                            top_k=req.top_k, top_p=req.top_p, n=req.n, stop=stop or None)
        return p.CompletionResponse(id=rid, model=req.model, choices=choices, usage=usage, provenance=record.as_dict())

    def _usage(jobs: list[TextJob], n: int, model: str) -> p.Usage:
        prompt = sum(job.prompt_tokens for job in jobs[::n])  # each prompt counted once, as OpenAI does
        completion = sum(job.completion_tokens for job in jobs)
        metrics.prompt_tokens.labels(model).inc(prompt)
        return p.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def _stream(pending: Pending, request: Request, deadline: float, rid: str, req, prompts, include_usage):
        created_at = int(time.time())

        def chunk(choices, usage=None) -> str:
            body = {"id": rid, "object": "text_completion", "created": created_at, "model": req.model,
                    "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        finished: set[int] = set()

        def endings() -> list[dict]:
            out = []
            for i, job in enumerate(pending.jobs):
                if job.ended and i not in finished:
                    finished.add(i)
                    out.append({"index": i, "text": "", "logprobs": None,
                                "finish_reason": "stop" if job.finish_reason == "stop" else "length"})
            return out

        try:
            if req.echo:
                yield chunk([{"index": i, "text": job.prompt, "logprobs": None, "finish_reason": None}
                             for i, job in enumerate(pending.jobs)])
            while True:
                try:
                    kind, value = await next_event(pending, request, deadline)
                except ApiError as e:
                    yield f"data: {json.dumps(_error_body(e.message, e.type, e.param, e.code))}\n\n"
                    break
                if kind == "error":
                    e = value
                    status_type = "invalid_request_error" if isinstance(e, UserError) else "server_error"
                    yield f"data: {json.dumps(_error_body(str(e), status_type))}\n\n"
                    break
                if kind == "pieces":
                    choices = {i: {"index": i, "text": piece, "logprobs": None, "finish_reason": None}
                               for i, piece in enumerate(value) if piece}
                    for end in endings():  # a row's last piece carries its finish reason, as OpenAI's do
                        choices.setdefault(end["index"], end)["finish_reason"] = end["finish_reason"]
                    yield chunk(list(choices.values()))
                else:
                    ends = endings()
                    if ends:
                        yield chunk(ends)
                    usage = _usage(pending.jobs, req.n, req.model)
                    if include_usage:
                        yield chunk([], usage.model_dump())
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not all(job.ended for job in pending.jobs):
                pending.cancelled = True  # the client left (or the stream failed): free the rows

    @app.post("/v1/images/generations", response_model=p.ImageResponse, tags=["generation"],
              summary="Generate images (OpenAI images; PNG as base64)", **v1)
    async def images(req: p.ImageRequest, request: Request):
        gen = model_of(req.model, "image")
        limit = min(s.max_images, s.max_batch)
        if req.n > limit:
            raise ApiError(400, f"n: at most {limit} images per request on this server; got {req.n}.", param="n",
                           code="limit")
        h, w, _ = gen.image_shape
        if req.size not in (None, f"{w}x{h}"):
            raise ApiError(400, f"size: this model makes {w}x{h} images only; got '{req.size}'. Fix: omit size or "
                           f"send '{w}x{h}'.", param="size")
        if req.response_format != "b64_json":
            raise ApiError(400, "response_format: this server returns images inline only; use 'b64_json'.",
                           param="response_format")
        label = req.label
        if label is not None and not gen.conditional:
            raise ApiError(400, f"label: '{req.model}' is not class-conditional; omit label.", param="label")
        if label is None and req.prompt and gen.conditional:
            names = {c.lower(): c for c in gen.classes}
            if req.prompt.strip().lower() not in names:
                raise ApiError(400, f"prompt: this class-conditional model takes a class name as prompt, one of "
                               f"{', '.join(gen.classes)}; got '{req.prompt[:40]}'. Or send `label`.", param="prompt")
            label = names[req.prompt.strip().lower()]
        options = dict(req.model_extra or {})
        known = gen.options()
        unknown = [k for k in options if k not in known]
        if unknown:
            have = f"its options: {', '.join(known)}" if known else "it takes no options beyond n, seed and label"
            raise ApiError(400, f"{unknown[0]}: not a field of this route nor an option of '{req.model}' ({have}).",
                           param=unknown[0])
        try:
            job = gen.job(req.n, req.seed, label, **options)
        except UserError as e:
            param = next((k for k in options if k in str(e)), "label" if label is not None else None)
            raise ApiError(400, str(e), param=param) from None
        if job.calls > s.max_image_calls:
            per_image = job.calls // job.n
            raise ApiError(400, f"n x steps: {job.n} images at {per_image} network calls each cost {job.calls}, over "
                           f"this server's {s.max_image_calls} per request. Fix: ask for at most "
                           f"{max(1, s.max_image_calls // per_image)} images, or fewer steps (e.g. sampler dpmpp2m "
                           "with 10-20 steps).", param="n", code="limit")
        pending = Pending(jobs=[job], rows=req.n, key=("image", tuple(sorted(job.options.items()))))
        deadline = asyncio.get_running_loop().time() + s.timeout_s
        submit(req.model, pending)
        result = None
        while True:
            kind, value = await next_event(pending, request, deadline)
            if kind == "images":
                result = value
            elif kind == "error":
                raise value
            else:
                break
        metrics.images.labels(req.model).inc(len(result))
        record = gen.record(req.seed, label=label, n=req.n, **job.options)
        fmt = req.output_format.upper()
        return p.ImageResponse(data=[p.ImageData(b64_json=base64.b64encode(
            encode(img, fmt, record.with_(parameters={**record.parameters, "index": i}), signer)).decode())
            for i, img in enumerate(result)])

    _accurate_openapi(app)
    app.add_middleware(Observe, metrics=metrics)
    app.add_middleware(BodyLimit, limit=s.max_body_bytes)
    return app


def _check_completion(req: p.CompletionRequest, prompts: list[str], gen, s: ServeSettings) -> None:
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


def _accurate_openapi(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body; this server answers invalid bodies with 400 (OpenAI's way)."""
    from fastapi.openapi.utils import get_openapi

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for item in schema.get("paths", {}).values():
                for op in item.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _watch_sigterm(state: dict) -> None:
    """Mark the server as draining on SIGTERM (readyz then says 503 so balancers stop sending), then let
    uvicorn's own handler stop accepting and finish the requests in flight."""
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            state["draining"] = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an app run inside a test client): no signals to watch
        pass
