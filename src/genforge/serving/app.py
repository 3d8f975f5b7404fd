"""The app: translates OpenAI-shaped requests into library jobs, queues them on the model's batcher, and
translates results (or `UserError`s) back. Every refusal is a 4xx in OpenAI's error shape naming the field
and the limit; nothing a client sends should produce a 5xx.

The /v1 routes live per API area in `routes/` (completions, images, image edits, audio, videos, music), sharing
`common.py`'s settings, errors, auth and batching (and `jobs.py`'s job queue for videos). This module wires them up
with the open routes: `/`, `/static/*` (the playground), `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`.
Every `/v1/*` route needs a key when the server has keys. Nothing here imports torch, so exports are served without it.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.errors import UserError
from genforge.media import Signer
from genforge.serving import protocol as p
from genforge.serving.common import (
    ERRORS,
    ApiError,
    BodyLimit,
    Observe,
    Server,
    ServeSettings,
    error_response,
)
from genforge.serving.metrics import Metrics
from genforge.serving.routes import BY_MODALITY, edits

STATIC = resources.files("genforge.serving") / "static"

__all__ = ["ApiError", "ServeSettings", "create_app"]


def _model_entry(name: str, gen, server: Server) -> p.Model:
    info = BY_MODALITY[gen.modality].describe(gen, server.settings)
    return p.Model(id=name, created=server.created, genforge=info)


def create_app(models: dict, settings: ServeSettings | None = None) -> FastAPI:
    """The server for already loaded generators ({name: an image, text, audio or video generator of a run or an
    export})."""
    s = settings or ServeSettings()
    unknown = sorted({gen.modality for gen in models.values()} - set(BY_MODALITY))
    if unknown:
        raise UserError(f"This server cannot serve {', '.join(unknown)} models yet; serve image, text, audio, video "
                        "or music models.")
    metrics = Metrics()
    if not s.mark:
        for gen in models.values():
            gen.use_mark_key(False)
    signer = Signer.from_files(s.sign_cert, s.sign_key) if s.sign_cert and s.sign_key else None
    server = Server(models, s, metrics, signer)
    state = {"ready": False, "draining": False}

    @asynccontextmanager
    async def lifespan(app):
        server.pool = ThreadPoolExecutor(max_workers=s.encode_workers or os.cpu_count() or 1,
                                         thread_name_prefix="genforge-encode")
        own = server.new_batchers()
        for b in own.values():
            b.start()
        server.batchers.update(own)
        jobs = server.jobs  # video jobs: one worker per video model, and their expiry
        if jobs is not None:
            jobs.start()
        _watch_sigterm(state)
        state["ready"] = True
        yield
        state["ready"] = False
        for b in own.values():  # this lifespan's: a test harness may run the app's lifespan more than once
            await b.stop()
        server.pool.shutdown(wait=True)
        if jobs is not None:
            await jobs.stop()

    app = FastAPI(title="genforge", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API for genforge models: /v1/models, /v1/completions, "
                              "/v1/images/generations, /v1/images/edits, /v1/images/variations, /v1/audio/speech, "
                              "/v1/videos, and genforge's /v1/music/render "
                              "(a tune's text to audio, a piano roll or MIDI). Send `Authorization: Bearer KEY` when "
                              "the server has keys.")
    app.state.settings, app.state.metrics, app.state.batchers, app.state.server = s, metrics, server.batchers, server

    # -- errors: OpenAI's shape everywhere -------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(UserError)
    async def user_error(request, e: UserError):
        return error_response(400, str(e), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        param = loc[0] if loc else None  # the request field (deeper parts name union members, not fields)
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "unknown field; remove it (see /docs for the fields this route takes)"
        elif first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        return error_response(400, f"{param or 'body'}: {msg}.", "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}.", kind,
                              headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request, e: Exception):  # a bug: answered in the same shape, the server stays up
        return error_response(500, f"Internal error ({type(e).__name__}); the server is still up.", "server_error")

    # -- open routes -----------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=p.Health, tags=["health"], summary="Alive (open, no key needed)")
    async def healthz():
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/readyz", response_model=p.Ready, tags=["health"], summary="Models loaded and not draining (open)",
             responses={503: {"model": p.ErrorResponse, "description": "Starting or draining."}})
    async def readyz():
        if not state["ready"] or state["draining"]:
            return error_response(503, "Not ready: starting up or draining for shutdown.", "unavailable")
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
    v1 = dict(dependencies=[Depends(server.require_key)], responses=ERRORS)

    @app.get("/v1/models", response_model=p.ModelList, tags=["models"], summary="The models served", **v1)
    async def list_models():
        return p.ModelList(data=[_model_entry(n, g, server) for n, g in models.items()])

    @app.get("/v1/models/{model}", response_model=p.Model, tags=["models"], summary="One model", **v1)
    async def get_model(model: str):
        return _model_entry(model, server.model(model), server)

    for area in BY_MODALITY.values():
        app.include_router(area.router(server))
    app.include_router(edits.router(server))  # /v1/images/edits and /variations

    _accurate_openapi(app)
    app.add_middleware(Observe, metrics=metrics)
    app.add_middleware(BodyLimit, limit=s.max_body_bytes)
    return app


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
