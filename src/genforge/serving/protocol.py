"""The request and response bodies of the OpenAI-shaped API, as pydantic models (the OpenAPI document is
generated from them). Limits that depend on the server's settings are checked in the routes
(`routes/*.py`), where the settings are; the shapes and fixed ranges live here."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx (and the rare 5xx) answer, in OpenAI's shape."""

    error: ErrorDetail


class ModelLimits(BaseModel):
    max_n: int
    max_rows: int
    max_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_image_calls: int | None = Field(None, description="Image models: the most network calls a request may "
                                        "cost (n x sampler steps, x2 when guided; one per image for one-pass models).")
    max_audio_calls: int | None = Field(None, description="Audio models: the most network calls a speech request "
                                        "may cost, counted as for images with one clip per digit.")
    max_digits: int | None = Field(None, description="Audio models: the most digits one speech input may hold.")
    max_input_chars: int | None = Field(None, description="Audio models: the most characters of a speech input.")
    max_frames: int | None = Field(None, description="Video models: the most frames one clip may have (seconds "
                                   "x fps, rounded).")
    min_frames: int | None = Field(None, description="Video models: the fewest frames one clip may have.")
    max_seconds: float | None = Field(None, description="Video models: max_frames at the model's fps.")
    max_queued_jobs: int | None = Field(None, description="Video models: jobs waiting to run before 429.")
    expiry_s: float | None = Field(None, description="Video models: how long a finished job and its files are kept.")
    max_render_chars: int | None = Field(None, description="Music models: the most characters of text one "
                                         "/v1/music/render request may send.")
    max_render_seconds: float | None = Field(None, description="Music models: the longest music /v1/music/render "
                                             "renders, in seconds at the tune's tempo.")


class ModelInfo(BaseModel):
    """genforge's extension to a model entry: what the playground and clients need to build a request."""

    modality: Literal["image", "text", "audio", "video", "music"]
    family: str
    classes: list[str] = []
    conditional: bool = False
    image_size: str | None = Field(None, description="Image and video models: the size of every image (frame), "
                                                     "'WxH'.")
    channels: int | None = None
    frames: int | None = Field(None, description="Video models: frames per clip by default (the trained length).")
    fps: float | None = Field(None, description="Video models: playback rate, frames per second.")
    voices: list[str] = Field([], description="Audio models: what a speech request may name as `voice` ('default': "
                                              "the model's choice, drawn from the seed when it has speakers).")
    sample_rate: int | None = Field(None, description="Audio models: samples per second of every clip (and of pcm).")
    response_formats: list[str] = Field([], description="Audio models: the encodings /v1/audio/speech writes; "
                                                          "music models: the formats /v1/music/render writes.")
    music_kind: Literal["abc", "events"] | None = Field(
        None, description="Music models: the text they write, ABC tunes or note events (one bar a line); "
                          "/v1/music/render reads it.")
    max_tokens_default: int | None = Field(None, description="Music models: enough new tokens for a whole piece.")
    options: dict[str, dict] = {}
    edits: dict[str, dict[str, dict]] = Field({}, description="Image models: the edits they do, each with its options "
                                              "as `options` lists them: inpaint and upscale through "
                                              "/v1/images/edits, vary through /v1/images/variations.")
    limits: ModelLimits


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "genforge"
    genforge: ModelInfo


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's /v1/completions body; `top_k` is an extension. Fields OpenAI has and genforge does not
    implement (logprobs, best_of > 1, penalties, suffix) are refused with 400 rather than ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[str] = Field("", description="A string or a list of strings (one choice set per prompt).")
    max_tokens: int = Field(16, ge=0, description="New tokens per choice, at most the server's limit (see /v1/models).")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, description="Extension: keep the k most likely tokens.")
    n: int = Field(1, ge=1, description="Choices per prompt, at most the server's limit.")
    stop: str | list[str] | None = Field(None, description="Up to the server's number of stop strings. Music "
                                         "models: absent means a blank line, the end of a piece.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="The same seed gives the same text.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    user: str | None = None
    logprobs: int | None = Field(None, description="Not supported: must be absent.")
    best_of: int | None = Field(None, description="Only 1 is supported.")
    suffix: str | None = Field(None, description="Not supported: must be absent.")
    presence_penalty: float = Field(0.0, description="Only 0 is supported.")
    frequency_penalty: float = Field(0.0, description="Only 0 is supported.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported: must be absent.")
    mark: bool = Field(True, description="Extension: the keyed text mark, when the server has a mark key; false "
                                         "leaves it out of this request's text. Never applied to music models (it "
                                         "would change the music).")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    provenance: dict | None = Field(None, description="Extension: what made the text (IPTC digital source type, "
                                                      "model and weights hash, seed, parameters, the mark's key id).")


class ImageRequest(BaseModel):
    """OpenAI's /v1/images/generations body. Extensions: `seed`, `label` (a class index or name, for
    class-conditional models) and the model's own sampling options as further fields (listed per model in
    /v1/models under genforge.options, e.g. `temperature` for a VAE)."""

    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str | None = Field(None, description="Unconditional models ignore it; for class-conditional ones a "
                                                 "class name picks the class (like `label`).")
    n: int = Field(1, ge=1, description="Images, at most the server's limit.")
    size: str | None = Field(None, description="Must be the model's own size, e.g. '28x28' (or absent).")
    response_format: Literal["b64_json", "url"] = Field("b64_json", description="Only b64_json is served.")
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="Encoding of each image; every format "
                                                          "carries the provenance as XMP.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="The same seed gives the same images.")
    label: int | str | None = Field(None, description="Class index or name, for class-conditional models.")
    quality: str | None = None
    style: str | None = None
    user: str | None = None


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageResponse(BaseModel):
    created: int = Field(default_factory=lambda: int(time.time()))
    data: list[ImageData]


MaskKind = Literal["alpha", "white"]
ResponseFormat = Literal["b64_json", "url"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageEditResponse(ImageResponse):
    """/v1/images/edits and /v1/images/variations: OpenAI's image response, with genforge's extensions."""

    task: Literal["inpaint", "vary", "upscale"] = Field(..., description="Extension: the edit made.")
    seed: int = Field(..., description="Extension: the seed used (drawn when the request named none).")
    notices: list[str] = Field([], description="Extension: conversions made to fit the model (size, colour mode, "
                                               "a full-size image area-downsampled for upscaling).")


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object; its id names one of the model's voices."""

    id: str


SPEECH_FORMATS = ("wav", "flac", "pcm", "mp3")
SPEECH_MIME = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm", "mp3": "audio/mpeg"}


class SpeechRequest(BaseModel):
    """OpenAI's /v1/audio/speech body. genforge's models speak digits: `input` holds digits or number words
    ("415 555 0199", "four one five"), read in one voice with short pauses between digits and longer ones between
    groups. Extensions: `seed`, and the model's own sampling options as further fields (listed per model in
    /v1/models under genforge.options). OpenAI's opus and aac formats, `instructions` and `stream_format: sse`
    are refused with 400 rather than ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str = Field(..., description="Digits (0-9) or number words, with spaces or punctuation between groups; "
                                        "at most the model's max_input_chars characters and max_digits digits.")
    voice: str | VoiceRef = Field("default", description="One of the model's voices (see /v1/models), or 'default'.")
    response_format: Literal["wav", "flac", "pcm", "mp3"] = Field(
        "wav", description="wav (16-bit PCM, the default here; OpenAI's is mp3), flac, mp3, or pcm: raw 16-bit "
                           "little-endian mono samples at the model's rate (the X-Sample-Rate header). wav, flac and "
                           "mp3 carry the provenance (and a C2PA manifest when the server signs).")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="1.0 is normal; higher reads faster (pitch kept).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Extension: the same seed gives the same audio.")
    instructions: str | None = Field(None, description="Not supported: must be absent.")
    stream_format: Literal["audio", "sse"] | None = Field(None, description="Only 'audio' (the whole file) is served.")


VIDEO_VARIANTS = {"video": "video/mp4", "thumbnail": "image/webp", "spritesheet": "image/jpeg"}


class VideoRequest(BaseModel):
    """OpenAI's POST /v1/videos body (JSON, or multipart form fields as the openai client sends). genforge's
    video models draw labelled clips: the prompt names a class ("7", "a 3+7 clip"), or `label` does. Extensions:
    `label`, `frames`, `seed`, and the model's own sampling options as further fields (listed per model in
    /v1/models under genforge.options). OpenAI's `input_reference` is refused with 400 rather than ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="A video model of this server (may be left out when it serves one).")
    prompt: str = Field("", max_length=1000, description="For class-conditional models: text naming one class, "
                                                         "e.g. '7' or 'a 3+7 clip'; unconditional models ignore it.")
    seconds: int | float | str | None = Field(None, description="Clip length: frames = round(seconds x fps), within "
                                              "the model's limits (see /v1/models). Default: the trained length.")
    frames: int | None = Field(None, ge=1, description="Extension: the clip length in frames (instead of seconds).")
    size: str | None = Field(None, description="Must be the model's own frame size, e.g. '64x64' (or absent).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Extension: the same seed gives the same clip.")
    label: int | str | None = Field(None, description="Extension: class index or name (instead of the prompt).")
    input_reference: str | None = Field(None, description="Not supported: must be absent.")


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """OpenAI's video job object. `progress` is an integer percentage that never decreases; `expires_at` is set
    once the job has finished (its files and the job itself are deleted then)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(..., ge=0, le=100)
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    prompt: str | None = None
    seconds: str
    size: str
    remixed_from_video_id: str | None = None
    error: VideoError | None = None
    genforge: dict = Field({}, description="Extension: the label, frames, fps, seed and options the clip is made "
                                           "with.")


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


MUSIC_MIME = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "png": "image/png", "mid": "audio/midi",
              "musicxml": "application/vnd.recordare.musicxml+xml", "abc": "text/vnd.abc"}


class MusicRenderRequest(BaseModel):
    """genforge's extension: POST /v1/music/render turns a tune's text (what /v1/completions wrote for a music
    model, or any ABC tune / event text) into a file to hear or see."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., description="ABC (one or more tunes, each starting X:) or note-event text (pieces "
                                       "separated by a blank line); at most max_render_chars characters.")
    kind: Literal["abc", "events"] | None = Field(None, description="What the text is; default: the model's kind "
                                                  "when `model` is given, else abc.")
    format: Literal["wav", "flac", "mp3", "png", "mid", "musicxml", "abc"] = Field(
        "wav", description="wav/flac/mp3: audio rendered with a General MIDI soundfont (22050 Hz mono); png: a piano "
                           "roll; mid: MIDI; musicxml: notation; abc: the tune's text (ABC only).")
    model: str | None = Field(None, description="A music model of this server: its provenance record goes into the "
                                                "file (none without it).")
    tune: int = Field(1, ge=1, description="Which tune (ABC) or piece (events) of the text, from 1.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="The seed that made the text, for the record "
                                                                  "(only with `model`).")


class Health(BaseModel):
    status: str
    pid: int


class Ready(BaseModel):
    status: str
    models: list[str]
