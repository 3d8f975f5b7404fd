"""POST /v1/images/generations: OpenAI's image generation, each image a base64 PNG, JPEG or WebP carrying its
provenance (and the keyed mark and a C2PA manifest when the server has them). A request is one image job;
the model's batcher renders jobs with equal options together. The keyed mark, the encoding, provenance and
base64 run on the server's encoding pool, not on the event loop nor the model's thread, and the response body
is written once from the base64 bytes (no model validation or re-serialisation of megabytes of text)."""

from __future__ import annotations

import base64
import time
from functools import partial

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from genforge.errors import UserError
from genforge.media import encode
from genforge.serving import protocol as p
from genforge.serving.batching import Pending
from genforge.serving.common import ERRORS, ApiError, Server, ServeSettings
from genforge.serving.routes.edits import describe_edits


def describe(gen, s: ServeSettings) -> p.ModelInfo:
    h, w, c = gen.image_shape
    return p.ModelInfo(modality="image", family=gen.meta.get("family", "?"), classes=list(gen.classes),
                       conditional=gen.conditional, image_size=f"{w}x{h}", channels=c, options=gen.options(),
                       edits=describe_edits(gen),
                       limits=p.ModelLimits(max_n=min(s.max_images, s.max_batch), max_rows=s.max_batch,
                                            max_image_calls=s.max_image_calls))


def router(server: Server) -> APIRouter:
    s, metrics = server.settings, server.metrics
    api = APIRouter()

    @api.post("/v1/images/generations", response_model=p.ImageResponse, tags=["generation"],
              summary="Generate images (OpenAI images; PNG as base64)", responses=ERRORS,
              dependencies=[Depends(server.require_key)])
    async def images(req: p.ImageRequest, request: Request):
        gen = server.model_of(req.model, "image")
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
        options = server.family_options(req.model_extra, gen, req.model, "n, seed and label")
        try:  # a multi-step sampler draws every step's noise up front: that is work, done off the loop; a one-pass
            # model's draw is a few numbers, cheaper than the hop to the pool (measured: 10-18% fewer requests/s)
            draw = partial(gen.job, req.n, req.seed, label, **options)
            job = await server.off_loop(draw) if "steps" in gen.options() else draw()
        except UserError as e:
            param = next((k for k in options if k in str(e)), "label" if label is not None else None)
            raise ApiError(400, str(e), param=param) from None
        if job.calls > s.max_image_calls:
            per_image = job.calls // job.n
            raise ApiError(400, f"n x steps: {job.n} images at {per_image} network calls each cost {job.calls}, over "
                           f"this server's {s.max_image_calls} per request. Fix: ask for at most "
                           f"{max(1, s.max_image_calls // per_image)} images, or fewer steps (e.g. sampler dpmpp2m "
                           "with 10-20 steps).", param="n", code="limit")
        pending = Pending(jobs=[job], rows=req.n, key=("image", tuple(sorted(job.options.items()))),
                          run_options={"mark": False})
        result = await server.render(req.model, pending, request)
        metrics.images.labels(req.model).inc(len(result))
        record = gen.record(req.seed, label=label, n=req.n, **job.options)
        body = await server.off_loop(response_body, gen, result, record, req.output_format.upper(), server.signer)
        return Response(body, media_type="application/json")

    return api


def response_body(gen, images, record, fmt: str, signer) -> bytes:
    """The JSON of an ImageResponse: each image marked (when a key is set), encoded with its record and base64'd
    straight into the body."""
    mark = gen.image_mark
    if mark is not None:
        images = mark.embed(images)
    parts = [b'{"created":%d,"data":[' % int(time.time())]
    for i, img in enumerate(images):
        data = encode(img, fmt, record.with_(parameters={**record.parameters, "index": i}), signer)
        parts += [b'{"b64_json":"' if i == 0 else b',{"b64_json":"', base64.b64encode(data),
                  b'","revised_prompt":null}']
    parts.append(b"]}")
    return b"".join(parts)
