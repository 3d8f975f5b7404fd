"""/v1/videos: OpenAI's video job API. POST makes a job (the clip is drawn later, by the model's worker in
jobs.py), GET polls its status and integer progress, /content downloads the MP4 (H.264 through media/video.py,
with the provenance record and a C2PA manifest when the server signs), its first frame (WebP) or a filmstrip of
its frames (JPEG); list and delete (which cancels) as OpenAI has them.

A request names a class, not a scene: the prompt is text naming one of the model's classes ("7", "a 3+7
clip"), or `label` does. The route asks nothing else of a model than `modality`, `meta`, `image_shape` (of a
frame), `frames`, `fps`, `classes`, `conditional`, `options()`, `generate(1, seed, labels, progress=...,
**options)` and `record()`, so a `genforge.load` run and a torch-free export are served alike.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from email import policy
from email.parser import BytesParser
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from genforge.errors import UserError
from genforge.labels import label_index
from genforge.options import SampleOption
from genforge.serving import protocol as p
from genforge.serving.common import ERRORS, ApiError, Server, ServeSettings, random_seed
from genforge.serving.jobs import Job, JobStore, QueueFull, owner_of

POLL_AFTER_MS = 500  # the openai client's poll helper waits this long between polls (openai-poll-after-ms)
FIXED = "prompt, label, seconds, frames, size and seed"
NOT_READY = {409: {"model": p.ErrorResponse, "description": "The job has not completed (queued, in progress or "
                                                            "failed): there is no content yet."}}


def frame_size(gen) -> tuple[int, int, int]:
    h, w, c = gen.image_shape  # (H, W, C) of every frame, as image models have it (runs and exports alike)
    return int(h), int(w), int(c)


def frame_bounds(gen, s: ServeSettings) -> tuple[int, int]:
    """The clip lengths a request may ask for: the model's `frames` option's range within the server's limit
    (only the trained length when the model takes no `frames` option)."""
    spec = gen.options().get("frames")
    if spec is None:
        return int(gen.frames), int(gen.frames)
    hi = s.max_video_frames if spec.get("max") is None else min(int(spec["max"]), s.max_video_frames)
    return int(spec.get("min") or 1), hi


def describe(gen, s: ServeSettings) -> p.ModelInfo:
    h, w, c = frame_size(gen)
    lo, hi = frame_bounds(gen, s)
    fps = float(gen.fps)
    return p.ModelInfo(modality="video", family=str(gen.meta.get("family", "?")), classes=list(gen.classes),
                       conditional=bool(gen.conditional), image_size=f"{w}x{h}", channels=c, frames=int(gen.frames),
                       fps=fps, options=gen.options(),
                       limits=p.ModelLimits(max_n=1, max_rows=1, max_frames=hi, min_frames=lo, max_seconds=hi / fps,
                                            max_queued_jobs=s.max_video_queue, expiry_s=s.video_expiry_s))


CONTENT_RESPONSE = {
    "description": "The clip as MP4 (variant=video), its first frame as WebP (thumbnail) or its frames side by side "
                   "as JPEG (spritesheet), each with the provenance record.",
    "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in p.VIDEO_VARIANTS.values()},
}


def router(server: Server) -> APIRouter:
    s, metrics = server.settings, server.metrics
    videos = {name: gen for name, gen in server.models.items() if gen.modality == "video"}
    store = JobStore({name: runner(name, gen, server) for name, gen in videos.items()}, s.max_video_queue,
                     s.video_expiry_s, s.max_video_kept, s.video_timeout_s, metrics, prefix="video_")
    server.jobs = store
    api = APIRouter(dependencies=[Depends(server.require_key)], tags=["video"])
    schema = p.VideoRequest.model_json_schema()
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                              "multipart/form-data": {"schema": schema}}}}

    def owner(request: Request) -> str:
        return owner_of(request.headers.get("authorization"), s.api_keys)

    def find(video_id: str, request: Request) -> Job:
        job = store.get(video_id, owner(request))
        if job is None:
            raise ApiError(404, f"No video job '{video_id[:64]}' here: it never existed, was deleted, or expired "
                           f"(jobs are kept {s.video_expiry_s:g} s after they finish).", "not_found_error",
                           "video_id", "video_not_found")
        return job

    @api.post("/v1/videos", response_model=p.Video, summary="Start a video job (OpenAI videos; poll it, then "
              "download its content)", responses=ERRORS, openapi_extra=body_doc)
    async def create(request: Request):
        req = await read_request(request)
        name = pick_model(req, videos, server)
        params = check(req, name, server.model_of(name, "video"), s)
        try:
            job = store.submit(name, owner(request), params)
        except QueueFull as e:
            raise ApiError(429, f"{e} Video jobs wait at most {s.max_video_queue} per model.", "rate_limit_error",
                           None, "queue_full", {"Retry-After": str(e.retry_after)}) from None
        return video_object(job)

    @api.get("/v1/videos", response_model=p.VideoList, summary="Your video jobs, newest first (a cursor page)",
             responses=ERRORS)
    async def list_videos(request: Request, limit: int = Query(20, ge=1, le=100),
                          order: Literal["asc", "desc"] = "desc", after: str | None = None):
        try:
            page, more = store.listing(owner(request), order, after, limit)
        except KeyError:
            raise ApiError(400, f"after: no video job '{after[:64]}' of yours here (deleted or expired). Fix: list "
                           "again from the start.", param="after") from None
        return p.VideoList(data=[video_object(j) for j in page], first_id=page[0].id if page else None,
                           last_id=page[-1].id if page else None, has_more=more)

    @api.get("/v1/videos/{video_id}", response_model=p.Video, summary="A video job's status and progress",
             responses=ERRORS)
    async def retrieve(video_id: str, request: Request):
        job = find(video_id, request)
        headers = {"openai-poll-after-ms": str(POLL_AFTER_MS)} if job.status in ("queued", "in_progress") else None
        return JSONResponse(video_object(job).model_dump(mode="json"), headers=headers)

    @api.delete("/v1/videos/{video_id}", response_model=p.VideoDeleted, summary="Delete a video job (cancels it "
                "when queued or running) and its files", responses=ERRORS)
    async def delete(video_id: str, request: Request):
        job = find(video_id, request)
        store.delete(job.id, job.owner)
        return p.VideoDeleted(id=job.id)

    @api.get("/v1/videos/{video_id}/content", response_class=Response, summary="Download a completed job's clip, "
             "thumbnail or spritesheet", responses={**ERRORS, **NOT_READY, 200: CONTENT_RESPONSE})
    async def content(video_id: str, request: Request,
                      variant: Literal["video", "thumbnail", "spritesheet"] = "video"):
        job = find(video_id, request)
        files = job.result
        if job.status != "completed" or files is None:
            why = f" ({job.error['message']})" if job.error else f" (progress {job.progress}%)"
            raise ApiError(409, f"Video job '{job.id}' is {job.status.replace('_', ' ')}{why}: its content exists "
                           "once its status is completed.", param="video_id", code="video_not_ready")
        ext = {"video": "mp4", "thumbnail": "webp", "spritesheet": "jpg"}[variant]
        return Response(files[variant], media_type=p.VIDEO_VARIANTS[variant],
                        headers={"Content-Disposition": f'inline; filename="{job.id}.{ext}"'})

    return api


# -- the request ---------------------------------------------------------------------------------------------------
async def read_request(request: Request) -> p.VideoRequest:
    """The body as JSON, a multipart form (what the openai client sends) or a urlencoded form; field checks as
    400s in the app's shape."""
    ctype = request.headers.get("content-type", "").lower()
    raw = await request.body()
    if ctype.startswith("multipart/form-data"):
        data = multipart_fields(raw, request.headers["content-type"])
    elif ctype.startswith("application/x-www-form-urlencoded"):
        data = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    else:
        try:
            data = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise ApiError(400, "body: the body is not valid JSON.", code="json_invalid") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body: send a JSON object (or multipart form fields) with at least `prompt`.")
    try:
        return p.VideoRequest.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def multipart_fields(raw: bytes, content_type: str) -> dict:
    """Form fields of a multipart body; a file part (OpenAI's input_reference) is kept as a marker."""
    try:
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
        parts = list(message.iter_parts()) if message.is_multipart() else None
    except Exception:  # noqa: BLE001 - a malformed body is the client's mistake
        parts = None
    if parts is None:
        raise ApiError(400, "body: not a multipart form this server can read. Fix: send JSON or form fields.")
    fields = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        if part.get_filename() is not None:
            fields[name] = "(a file)"
            continue
        payload = part.get_payload(decode=True) or b""
        fields[name] = payload.decode(part.get_content_charset() or "utf-8", "replace")
    return fields


def pick_model(req: p.VideoRequest, videos: dict, server: Server) -> str:
    if req.model is not None:
        return req.model
    if len(videos) == 1:
        return next(iter(videos))
    have = f"its video models: {', '.join(videos)}" if videos else "this server serves no video model"
    raise ApiError(400, f"model: name the model ({have}).", param="model")


def prompt_label(prompt: str, classes: list[str]) -> str | None:
    """The class a prompt names: the whole prompt, or one class name standing alone in it ("a 7 bouncing",
    "3+7 moving"; "a+b" also matches "b+a"). UserError when it names several."""
    text = prompt.strip()
    exact = {c.lower(): c for c in classes}
    if text.lower() in exact:
        return exact[text.lower()]
    found = []
    for c in classes:
        spellings = {c, "+".join(reversed(c.split("+")))} if "+" in c else {c}
        if any(re.search(rf"(?<![\w+]){re.escape(x)}(?![\w+])", text, re.IGNORECASE) for x in spellings):
            found.append(c)
    if len(found) > 1:
        raise UserError(f"the prompt names several classes ({', '.join(found[:5])}); name one, or send `label`.")
    return found[0] if found else None


def check(req: p.VideoRequest, name: str, gen, s: ServeSettings) -> dict:
    """The request checked against the model and the server's limits, as the job's parameters; each mistake a
    400 naming its field."""
    if req.input_reference is not None:
        raise ApiError(400, "input_reference: not supported (genforge's video models draw clips of a class, from "
                       "noise); omit it.", param="input_reference", code="unsupported")
    h, w, _ = frame_size(gen)
    if req.size not in (None, f"{w}x{h}"):
        raise ApiError(400, f"size: '{name}' makes {w}x{h} frames only; got '{str(req.size)[:20]}'. Fix: omit size "
                       f"or send '{w}x{h}'.", param="size")
    label = None
    if req.label is not None:
        if not gen.conditional:
            raise ApiError(400, f"label: '{name}' is not class-conditional; omit label.", param="label")
        try:
            label = gen.classes[label_index(list(gen.classes), req.label)]
        except UserError as e:
            raise ApiError(400, f"label: {e}", param="label") from None
    elif gen.conditional:
        try:
            label = prompt_label(req.prompt, list(gen.classes))
        except UserError as e:
            raise ApiError(400, f"prompt: {e}", param="prompt") from None
        if label is None:
            raise ApiError(400, f"prompt: '{name}' draws clips of a class; name one in the prompt, one of "
                           f"{', '.join(gen.classes)} (got '{req.prompt[:40]}'), or send `label`.", param="prompt")
    fps = float(gen.fps)
    frames = clip_frames(req, name, gen, s, fps)
    options = family_options(req.model_extra, gen, name)
    if "frames" in gen.options():
        options["frames"] = frames
    elif frames != int(gen.frames):
        raise ApiError(400, f"frames: '{name}' makes {gen.frames}-frame clips only.", param="frames", code="limit")
    seed = req.seed if req.seed is not None else random_seed()
    return {"prompt": req.prompt, "label": label, "frames": frames, "fps": fps, "seed": seed, "options": options,
            "size": f"{w}x{h}", "seconds": f"{frames / fps:g}"}


def clip_frames(req: p.VideoRequest, name: str, gen, s: ServeSettings, fps: float) -> int:
    lo, hi = frame_bounds(gen, s)
    span = f"{lo}..{hi} frames ({lo / fps:g}..{hi / fps:g} s at {fps:g} fps)"
    if req.seconds is not None and req.frames is not None:
        raise ApiError(400, "seconds: send seconds or frames, not both.", param="seconds")
    if req.seconds is not None:
        try:
            seconds = float(req.seconds)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise ApiError(400, f"seconds: a positive number of seconds, e.g. '2'; got '{str(req.seconds)[:20]}'.",
                           param="seconds")
        frames = round(seconds * fps)
        if not lo <= frames <= hi:
            raise ApiError(400, f"seconds: {seconds:g} s is {frames} frames at {fps:g} fps; '{name}' makes {span} "
                           "on this server.", param="seconds", code="limit")
        return frames
    if req.frames is not None:
        if not lo <= req.frames <= hi:
            raise ApiError(400, f"frames: '{name}' makes {span} on this server; got {req.frames}.", param="frames",
                           code="limit")
        return req.frames
    return int(gen.frames)


def family_options(extra: dict | None, gen, name: str) -> dict:
    """The request's further fields, which must be the model's own options with values in range (form fields
    arrive as text: numbers and booleans are read from it)."""
    options = Server.family_options(extra, gen, name, FIXED)
    known = gen.options()
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        spec = SampleOption.from_description(known[key])
        if isinstance(value, str) and spec.choices is None and spec.type in (int, float, bool):
            value = from_text(key, value, spec.type)
        elif isinstance(value, str) and spec.choices is not None and value not in spec.choices:
            value = next((c for c in spec.choices if str(c) == value), value)
        if spec.type is bool and not isinstance(value, bool):
            raise ApiError(400, f"{key}: true or false; got {value!r}.", param=key)
        try:
            out[key] = spec.check(key, value)
        except UserError as e:
            raise ApiError(400, f"{key}: {e}", param=key) from None
    return out


def from_text(key: str, value: str, kind: type):
    if kind is bool:
        words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
        if value.strip().lower() not in words:
            raise ApiError(400, f"{key}: true or false; got '{value[:20]}'.", param=key)
        return words[value.strip().lower()]
    try:
        return kind(value) if kind is float else int(value.strip())
    except ValueError:
        raise ApiError(400, f"{key}: a{'n int' if kind is int else ' float'}; got '{value[:20]}'.", param=key) from None


# -- the job ---------------------------------------------------------------------------------------------------------
def runner(name: str, gen, server: Server):
    """What the model's worker runs for a job: the clip (the generator reports progress, which also stops a
    deleted job), then its three files with the provenance record."""

    def run(job: Job) -> dict[str, bytes]:
        from genforge.media import encode
        from genforge.media.video import encode_clip, filmstrip, mp4_scale

        q = job.params
        clips = gen.generate(1, seed=q["seed"], labels=q["label"], progress=job.report, **q["options"])
        clip = np.asarray(clips[0])
        extra = {k: v for k, v in q["options"].items() if k != "frames"}
        record = gen.record(q["seed"], label=q["label"], frames=int(clip.shape[0]), fps=q["fps"], **extra)
        files = {"video": encode_clip(clip, "mp4", q["fps"], record, server.signer, scale=mp4_scale(*clip.shape[1:3])),
                 "thumbnail": encode(clip[0], "WEBP", record, server.signer),
                 "spritesheet": encode(filmstrip(clip[None]), "JPEG", record, server.signer)}
        server.metrics.video_seconds.labels(name).inc(clip.shape[0] / q["fps"])
        return files

    return run


def video_object(job: Job) -> p.Video:
    q = job.params
    return p.Video(id=job.id, model=job.model, status=job.status, progress=job.progress,
                   created_at=int(job.created_at),
                   completed_at=int(job.completed_at) if job.completed_at is not None else None,
                   expires_at=math.ceil(job.expires_at) if job.expires_at is not None else None,
                   prompt=q["prompt"], seconds=q["seconds"], size=q["size"],
                   error=p.VideoError(**job.error) if job.error else None,
                   genforge={k: q[k] for k in ("label", "frames", "fps", "seed", "options")})
