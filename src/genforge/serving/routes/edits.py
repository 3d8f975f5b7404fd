"""POST /v1/images/edits and /v1/images/variations: OpenAI's image edits as multipart forms (what the openai
client's `images.edit` and `images.create_variation` send).

- edits, with a mask: inpainting. The mask is OpenAI's (a PNG, transparent where to edit), or black-and-white
  (white = edit) with `mask_kind=white`; without a mask, the image's own transparent pixels are the mask.
- edits to a super-resolution model (its only edit is upscale): the whole image upscaled; it takes no mask.
- variations: image-to-image (SDEdit for diffusion, around the posterior for a VAE), `strength` 0..1.

Extensions, as further form fields: `seed`, `label` (or a class name as `prompt`), `mask_kind`, `output_format`
and the edit's own options (listed per model in /v1/models under genforge.edits, e.g. `steps`, `strength`,
`jump`). The route reads the form and hands the library its arrays; `gen.edit_job` checks and prepares them, and
the model's batcher renders edits with equal options together, as it does generations. Every image carries an
"edited" provenance record naming its source image (and its hash) as the ingredient.
"""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from genforge.errors import UserError
from genforge.media import decode, encode, masks
from genforge.media.images import MIME
from genforge.serving import protocol as p
from genforge.serving.batching import Pending
from genforge.serving.common import ERRORS, ApiError, Server, random_seed

MAX_SIDE = 4096  # pixels a side of an uploaded image (the models work at a few dozen)
IGNORED = ("user", "quality")  # OpenAI fields that change nothing here
ROUTE = {"inpaint": "/v1/images/edits (with a mask)", "upscale": "/v1/images/edits (no mask)",
         "vary": "/v1/images/variations"}
TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def edit_tasks(gen) -> tuple[str, ...]:
    """The edits a served model can do (none for a model whose generator has no edit methods)."""
    tasks = getattr(gen, "edit_tasks", None)
    return tuple(tasks()) if tasks is not None else ()


def describe_edits(gen) -> dict[str, dict]:
    """/v1/models' `edits`: {task: its options}; the playground builds its edit form from it."""
    return {task: gen.edit_options(task) for task in edit_tasks(gen)}


def option_specs(gen, name: str, task: str) -> dict[str, dict]:
    """The options of `task` on model `name`, or a 400 saying why it cannot do it and what can."""
    if getattr(gen, "edit_options", None) is None:
        raise ApiError(400, f"'{name}' cannot edit images here: its runtime has no edits. Fix: serve its run "
                       "directory, or an export made by a genforge with edits.", param="model", code="cannot_edit")
    try:
        return gen.edit_options(task)
    except UserError as e:
        have = edit_tasks(gen)
        hint = f" '{name}' can: {', '.join(f'{t} via {ROUTE[t]}' for t in have)}." if have else ""
        raise ApiError(400, f"{e}{hint}", param="model", code="cannot_edit") from None


def typed_options(raw: dict[str, str], specs: dict[str, dict], name: str, task: str) -> dict:
    """Form strings as the option's type (ranges and choices are the library's to check)."""
    out = {}
    for key, text in raw.items():
        spec = specs.get(key)
        if spec is None:
            have = f"its {task} options: {', '.join(specs)}" if specs else f"it takes no {task} options"
            raise ApiError(400, f"{key}: not a field of this route nor an option of '{name}' ({have}).", param=key)
        if not isinstance(text, str):
            raise ApiError(400, f"{key}: a form field, not a file.", param=key)
        kind = spec.get("type")
        try:
            if kind == "bool":
                value = {"true": True, "1": True, "on": True, "yes": True,
                         "false": False, "0": False, "off": False, "no": False}[text.strip().lower()]
            elif kind == "int":
                number = float(text)
                if not number.is_integer():
                    raise ValueError(text)
                value = int(number)
            elif kind == "float":
                value = float(text)
            else:
                value = text
        except (KeyError, ValueError, OverflowError):
            raise ApiError(400, f"{key}: must be {TYPE_WORDS.get(kind, kind)}; got '{text[:40]}'.", param=key) from None
        out[key] = value
    return out


def class_label(gen, name: str, label: str | None, prompt: str | None):
    """The class to edit with: `label`, or a class name as the prompt (unconditional models ignore the prompt)."""
    if label is not None and not gen.conditional:
        raise ApiError(400, f"label: '{name}' is not class-conditional; omit label.", param="label")
    if label is None and prompt and gen.conditional:
        names = {c.lower(): c for c in gen.classes}
        if prompt.strip().lower() not in names:
            raise ApiError(400, f"prompt: this class-conditional model takes a class name as prompt, one of "
                           f"{', '.join(gen.classes)}; got '{prompt[:40]}'. Or send `label`, or an empty prompt to "
                           "edit without a class.", param="prompt")
        return names[prompt.strip().lower()]
    return label


def read_image(data: bytes, param: str) -> tuple[np.ndarray, str]:
    """uint8 (H, W, C) pixels and the MIME type of an uploaded PNG, JPEG or WebP."""
    from PIL import Image

    try:
        w, h = Image.open(io.BytesIO(data)).size  # lazily: the size before the pixels
    except Exception:  # noqa: BLE001 - Pillow raises several types for a foreign file
        w = h = 0
    if max(w, h) > MAX_SIDE:
        raise ApiError(400, f"{param}: {w}x{h} is over this server's {MAX_SIDE} pixels a side; send a smaller image.",
                       param=param)
    try:
        pixels, _, fmt = decode(data)
    except ValueError:
        raise ApiError(400, f"{param}: not an image this server reads ({len(data)} bytes). Fix: send a PNG, JPEG or "
                       "WebP file.", param=param, code="invalid_image") from None
    if fmt not in MIME:
        raise ApiError(400, f"{param}: a {fmt} file; send PNG, JPEG or WebP.", param=param, code="invalid_image")
    return pixels, MIME[fmt]


def read_mask(data: bytes, kind: str, shape: tuple[int, int], param: str = "mask") -> np.ndarray:
    try:
        mask = masks.read_mask(data, kind)
    except UserError as e:
        raise ApiError(400, f"{param}: {e}", param=param, code="invalid_mask") from None
    if mask.shape != shape:
        raise ApiError(400, f"{param}: the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                       f"{shape[1]}x{shape[0]}; they must be the same size.", param=param, code="invalid_mask")
    return mask


def router(server: Server) -> APIRouter:
    s, metrics = server.settings, server.metrics
    limit = min(s.max_images, s.max_batch)
    api = APIRouter(dependencies=[Depends(server.require_key)], tags=["generation"])

    async def images_of(image, image_list) -> list[tuple[bytes, np.ndarray, str, str]]:
        """(bytes, pixels, MIME, file name) of each uploaded image (`image`, or OpenAI's array `image[]`)."""
        files = [*(image or []), *(image_list or [])]
        if not files:
            raise ApiError(400, "image: send the image to edit as a file (multipart field `image`).", param="image")
        out = []
        for f in files:
            data = await f.read()
            pixels, mime = read_image(data, "image")
            out.append((data, pixels, mime, f.filename or "image"))
        if len({x[1].shape for x in out}) > 1:
            raise ApiError(400, "image: the images differ in size or colour mode; send images of one size.",
                           param="image")
        return out

    async def extras(request: Request, fixed: set[str]) -> dict:
        """The form's fields beyond the route's own: the edit's options (empty ones are left to the default)."""
        form = await request.form()  # FastAPI has parsed it already: this is its cached copy
        return {k: v for k, v in form.multi_items() if k not in fixed and k not in IGNORED and v != ""}

    async def respond(request, name, gen, task, sources, mask, label, n, size, response_format, output_format,
                      seed, options) -> p.ImageEditResponse:
        h, w, _ = gen.image_shape
        if size not in (None, "", "auto", f"{w}x{h}"):
            raise ApiError(400, f"size: this model makes {w}x{h} images only; got '{size}'. Fix: omit size or send "
                           f"'{w}x{h}'.", param="size")
        if response_format != "b64_json":
            raise ApiError(400, "response_format: this server returns images inline only; use 'b64_json'.",
                           param="response_format")
        if len(sources) * n > limit:
            asked = f"{len(sources)} images x n={n}" if len(sources) > 1 else str(n)
            raise ApiError(400, f"n: at most {limit} images per request on this server; got {asked}.", param="n",
                           code="limit")
        if seed is None:  # drawn, so the record says it; 53 bits, which a browser's numbers hold exactly
            seed = random_seed() >> 10
        pixels = sources[0][1] if len(sources) == 1 else np.stack([x[1] for x in sources])
        with warnings.catch_warnings(record=True) as caught:  # conversions of size or colour mode: told, not refused
            warnings.simplefilter("always")
            try:
                job = gen.edit_job(task, pixels, mask, n=n, seed=seed, labels=label, **options)
            except UserError as e:
                param = next((k for k in options if k in str(e)), "label" if "label" in str(e).lower() else None)
                raise ApiError(400, str(e), param=param) from None
        notices = [str(c.message) for c in caught if issubclass(c.category, UserWarning)]
        if job.calls > s.max_image_calls:
            per_image = max(1, job.calls // job.n)
            raise ApiError(400, f"n x steps: {job.n} images at {per_image} network calls each cost {job.calls}, over "
                           f"this server's {s.max_image_calls} per request. Fix: ask for at most "
                           f"{max(1, s.max_image_calls // per_image)} images, or fewer steps (inpainting: or a "
                           "lower resample).", param="n", code="limit")
        pending = Pending(jobs=[job], rows=job.n, key=("edit", tuple(sorted(job.options.items()))))
        result = await server.render(name, pending, request)
        metrics.images.labels(name).inc(len(result))
        record = gen.record(seed, label=label, n=n, **job.options)
        fmt = output_format.upper()

        def encoded() -> list[p.ImageData]:  # on the encoding pool, off the event loop
            data = []
            for i, img in enumerate(result):
                source, _, mime, title = sources[i // n]
                rec = record.edited_from(source, title=title, fmt=mime)
                rec = rec.with_(parameters={**rec.parameters, "index": i})
                signed = encode(img, fmt, rec, server.signer, sources=[source])  # the source: a C2PA ingredient
                data.append(p.ImageData(b64_json=base64.b64encode(signed).decode()))
            return data

        return p.ImageEditResponse(data=await server.off_loop(encoded), task=task, seed=seed, notices=notices)

    edit_fields = {"image", "image[]", "mask", "model", "prompt", "n", "size", "response_format", "output_format",
                   "seed", "label", "mask_kind"}

    @api.post("/v1/images/edits", response_model=p.ImageEditResponse, responses=ERRORS,
              summary="Edit images: fill a masked region (OpenAI image edits), or upscale with a super-resolution "
                      "model (no mask)")
    async def edit_images(
        request: Request,
        model: str = Form(..., description="An image model of this server that edits (see genforge.edits in "
                                           "/v1/models)."),
        image: list[UploadFile] | None = File(None, description="The image (PNG, JPEG or WebP). Of another size "
                                              "than the model's, it is converted, and the response's notices say so."),
        image_list: list[UploadFile] | None = File(None, alias="image[]", description="Several images (OpenAI's "
                                                   "array form), each edited with the same mask."),
        mask: UploadFile | None = File(None, description="Where to edit, the image's size: transparent (alpha < 128) "
                                       "where to edit; with mask_kind=white, white where to edit. Absent: the "
                                       "image's own transparent pixels. A super-resolution model takes none."),
        mask_kind: p.MaskKind | None = Form(None, description="Extension: 'alpha' (OpenAI's, the default) or "
                                             "'white' (a black-and-white mask)."),
        prompt: str | None = Form(None, description="For class-conditional models a class name (like label); "
                                                    "others ignore it."),
        label: str | None = Form(None, description="Extension: class index or name, for class-conditional models."),
        n: int = Form(1, ge=1, description="Results per image, at most the server's limit."),
        size: str | None = Form(None, description="Must be the model's own size (or absent)."),
        response_format: p.ResponseFormat = Form("b64_json", description="Only b64_json is served."),
        output_format: p.OutputFormat = Form("png", description="Encoding of each image."),
        seed: int | None = Form(None, ge=0, le=2**63 - 1, description="Extension: the same seed gives the same "
                                                                      "images."),
    ):
        gen = server.model_of(model, "image")
        task = "upscale" if edit_tasks(gen) == ("upscale",) else "inpaint"
        specs = option_specs(gen, model, task)
        options = typed_options(await extras(request, edit_fields), specs, model, task)
        sources = await images_of(image, image_list)
        shape = sources[0][1].shape[:2]
        if task == "upscale":
            if mask is not None or mask_kind is not None:
                raise ApiError(400, f"mask: '{model}' is a super-resolution model: it upscales the whole image and "
                               "takes no mask. Fix: omit mask.", param="mask")
            edit_mask = None
        elif mask is not None:
            edit_mask = read_mask(await mask.read(), mask_kind or "alpha", shape)
        elif mask_kind is not None:
            raise ApiError(400, "mask_kind: says how to read a mask file; send the mask too.", param="mask_kind")
        elif masks.has_transparency(sources[0][0]):
            edit_mask = read_mask(sources[0][0], "alpha", shape, "image")
        else:
            raise ApiError(400, "mask: inpainting needs to know where to edit: send a mask (transparent where to "
                           "edit, or white with mask_kind=white), or an image with transparent pixels there. "
                           "For variations of the whole image use /v1/images/variations.", param="mask")
        return await respond(request, model, gen, task, sources, edit_mask, class_label(gen, model, label, prompt),
                             n, size, response_format, output_format, seed, options)

    vary_fields = {"image", "model", "prompt", "n", "size", "response_format", "output_format", "seed", "label"}

    @api.post("/v1/images/variations", response_model=p.ImageEditResponse, responses=ERRORS,
              summary="Variations of an image (OpenAI image variations; SDEdit for diffusion models)")
    async def image_variations(
        request: Request,
        model: str = Form(..., description="An image model of this server that varies (see genforge.edits)."),
        image: UploadFile = File(..., description="The image (PNG, JPEG or WebP)."),
        prompt: str | None = Form(None, description="Extension: a class name for class-conditional models."),
        label: str | None = Form(None, description="Extension: class index or name, for class-conditional models."),
        n: int = Form(1, ge=1, description="Variations, at most the server's limit."),
        size: str | None = Form(None, description="Must be the model's own size (or absent)."),
        response_format: p.ResponseFormat = Form("b64_json", description="Only b64_json is served."),
        output_format: p.OutputFormat = Form("png", description="Extension: encoding of each image."),
        seed: int | None = Form(None, ge=0, le=2**63 - 1, description="Extension: the same seed gives the same "
                                                                      "images."),
    ):
        gen = server.model_of(model, "image")
        specs = option_specs(gen, model, "vary")
        options = typed_options(await extras(request, vary_fields), specs, model, "vary")
        sources = await images_of([image], None)
        return await respond(request, model, gen, "vary", sources, None, class_label(gen, model, label, prompt),
                             n, size, response_format, output_format, seed, options)

    return api
