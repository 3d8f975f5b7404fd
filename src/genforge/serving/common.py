"""What every route shares: the server's settings and limits, OpenAI's error shape, the two middlewares (body
limit, request metrics), and `Server`, the per-app context through which a route finds its model, checks the
model's own options, queues a job on the model's batcher and waits for the result.

Torch-free, like the routes: a server of exports (onnxruntime) never imports torch.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from genforge.serving import protocol as p
from genforge.serving.auth import authorized
from genforge.serving.batching import Batcher, Pending, QueueFull
from genforge.serving.metrics import Metrics
from genforge.serving.scheduler import TextScheduler

# the route that serves each modality (named in the 400 for a model sent to another modality's route)
ROUTES = {"text": "/v1/completions", "image": "/v1/images/generations", "audio": "/v1/audio/speech",
          "video": "/v1/videos", "music": "/v1/completions (and /v1/music/render to hear it)"}


@dataclass
class ServeSettings:
    """Batching and limits; every limit is reported per model in /v1/models."""

    max_batch: int = 32  # rows (images, text choices or spoken digits) per forward pass; also the most one request may ask for
    max_wait_ms: float = 10.0  # how long a batch waits for company
    max_queue: int = 64  # requests waiting per model before 429
    # admission by estimated wait: a request whose estimated wait before it starts exceeds this is refused (429 with
    # Retry-After); 0 = the request's own estimated running time (text) or two full batches' time (images, speech)
    max_queue_wait_s: float = 0.0
    encode_workers: int = 0  # threads that encode, mark and sign results off the event loop; 0 = one per core
    timeout_s: float = 120.0  # per request, queue wait included
    max_body_bytes: int = 2 * 1024 * 1024
    max_n: int = 16  # choices per prompt
    max_images: int = 64
    # network forward passes one image request may cost, counted in images (n x sampler steps, x2 when guided):
    # a one-pass GAN or VAE is far inside it; it stops a 1,000-step DDPM batch from holding the model for minutes
    max_image_calls: int = 4096
    # the same bound for one speech request, counted in digit clips (digits x the family's calls per clip)
    max_audio_calls: int = 4096
    max_input_chars: int = 1024  # characters of a speech request's input (its digits are limited apart)
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_stop: int = 4
    max_stop_chars: int = 64
    # video jobs (/v1/videos): jobs waiting per model before 429, frames per clip (the model's own bound applies
    # too), how long a finished job and its files are kept, how long one job may run, finished jobs kept at most
    max_video_queue: int = 16
    max_video_frames: int = 64
    video_expiry_s: float = 3600.0
    video_timeout_s: float = 600.0
    max_video_kept: int = 256
    # /v1/music/render: characters of text, seconds of music (at the tune's tempo), renders waiting before 429
    max_render_chars: int = 32_768
    max_render_seconds: float = 300.0
    max_render_queue: int = 16
    api_keys: list[str] = field(default_factory=list)
    mark: bool = True  # the keyed marks, when a key is set ($GENFORGE_MARK_KEY_FILE / $GENFORGE_MARK_KEY)
    sign_cert: str | None = None  # PEM chain and key for a C2PA manifest in every image, audio and video file
    sign_key: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = status, message, type, param, code, headers


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str, param=None, code=None, headers=None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


ERRORS = {status: {"model": p.ErrorResponse, "description": text} for status, text in {
    400: "Invalid request: the message names the field and the limit.",
    401: "Missing or wrong API key (only when the server has keys).",
    404: "Unknown model (or video job).",
    413: "Request body over the size limit.",
    429: "The model's queue (of requests or video jobs) is full; retry after the Retry-After header's seconds.",
    504: "The request took longer than the server's per-request timeout.",
}.items()}


def random_seed() -> int:
    """A seed for a request that names none, so its provenance can still say which seed made it."""
    return secrets.randbits(63)


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
        body = json.dumps(error_body(f"Request body over {self.limit} bytes. Fix: send less (fewer or shorter "
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


class Server:
    """One app's models, settings, metrics, signer and batchers (started by the app's lifespan), and what every
    route does with them."""

    def __init__(self, models: dict, settings: ServeSettings, metrics: Metrics, signer=None):
        self.models, self.settings, self.metrics, self.signer = models, settings, metrics, signer
        self.batchers: dict[str, Batcher | TextScheduler] = {}
        self.pool: ThreadPoolExecutor | None = None  # encoding, marks and provenance, off the event loop
        self.jobs = None  # the video job store (jobs.JobStore), set by routes/videos.py; started by the lifespan
        self.created = int(time.time())

    def new_batchers(self) -> dict[str, Batcher | TextScheduler]:
        """Text and music: a step-level scheduler; images and speech: a batcher; video: jobs (routes/videos.py)."""
        s = self.settings

        def one(name, gen):
            if gen.modality in ("text", "music"):  # a music model is a text model
                return TextScheduler(name, gen, s.max_batch, s.max_queue, self.metrics, s.max_queue_wait_s)
            return Batcher(name, gen, s.max_batch, s.max_wait_ms / 1000, s.max_queue, self.metrics, s.max_queue_wait_s)

        return {name: one(name, gen) for name, gen in self.models.items() if gen.modality != "video"}

    async def off_loop(self, fn, *args):
        """`fn(*args)` on the encoding pool (PNG/WebP/WAV encoding, marks, provenance): the event loop keeps
        answering while it runs."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def require_key(self, request: Request) -> None:
        """The dependency of every /v1 route."""
        if not authorized(request.headers.get("authorization"), self.settings.api_keys):
            raise ApiError(401, "Missing or invalid API key. Send the header `Authorization: Bearer KEY`.",
                           "authentication_error", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    def model(self, name: str):
        if name not in self.models:
            raise ApiError(404, f"The model '{name}' does not exist. Models here: {', '.join(self.models)}.",
                           "not_found_error", "model", "model_not_found")
        return self.models[name]

    def model_of(self, name: str, modality: str, *others: str):
        """The model `name`, which must be of `modality` or one of `others` (else a 400 naming the route that
        serves it)."""
        gen = self.model(name)
        if gen.modality not in (modality, *others):
            article = "an" if gen.modality[0] in "aeiou" else "a"
            raise ApiError(400, f"'{name}' is {article} {gen.modality} model; use "
                           f"{ROUTES.get(gen.modality, '/v1/models to see what it serves')}.", param="model",
                           code="wrong_modality")
        return gen

    @staticmethod
    def family_options(extra: dict | None, gen, model: str, fixed: str) -> dict:
        """A request's further fields, which must be the model's own sampling options (`fixed`: what the route
        takes besides, for the message)."""
        options = dict(extra or {})
        known = gen.options()
        unknown = [k for k in options if k not in known]
        if unknown:
            have = f"its options: {', '.join(known)}" if known else f"it takes no options beyond {fixed}"
            raise ApiError(400, f"{unknown[0]}: not a field of this route nor an option of '{model}' ({have}).",
                           param=unknown[0])
        return options

    def submit(self, name: str, pending: Pending) -> None:
        try:
            self.batchers[name].submit(pending)
        except QueueFull as e:
            self.metrics.rejected.labels(name).inc()
            # Retry-After in whole seconds (HTTP's), retry-after-ms exact (OpenAI's clients read it first)
            raise ApiError(429, str(e), "rate_limit_error", None, "queue_full",
                           {"Retry-After": str(math.ceil(e.retry_after)),
                            "retry-after-ms": str(math.ceil(e.retry_after * 1000))}) from None

    async def next_event(self, pending: Pending, request: Request, deadline: float):
        """The next result event; cancels the request (freeing its rows) on timeout or client disconnect."""
        loop = asyncio.get_running_loop()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                pending.cancelled = True
                raise ApiError(504, f"The request took longer than the server's {self.settings.timeout_s:g} s limit. "
                               "Fix: ask for fewer tokens, images or digits, or retry when the server is less busy.",
                               "timeout", None, "timeout")
            try:
                return await asyncio.wait_for(pending.events.get(), min(left, 0.25))
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    pending.cancelled = True  # its rows end at their next token
                    raise ApiError(499, "The client closed the request.", "client_closed", None, "client_closed")

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.timeout_s

    async def render(self, name: str, pending: Pending, request: Request):
        """Queue a one-job request (images, clips) and wait for what the batch rendered for it."""
        deadline = self.deadline()
        self.submit(name, pending)
        result = None
        while True:
            kind, value = await self.next_event(pending, request, deadline)
            if kind == "result":
                result = value
            elif kind == "error":
                raise value
            else:
                return result
