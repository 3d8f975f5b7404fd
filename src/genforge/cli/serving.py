"""`genforge serve`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from genforge.cli.common import app, err, signer_from, user_errors
from genforge.errors import UserError


@app.command()
@user_errors
def serve(
    runs: List[str] = typer.Argument(..., help="Run directories to serve, each RUN_DIR or NAME=RUN_DIR (the name "
                                               "clients pass as `model`; default: the directory's name); an export "
                                               "(`genforge export`) is served on onnxruntime."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default answers this machine only; use "
                                                "0.0.0.0 to serve others, and then set API keys."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key_file: Optional[Path] = typer.Option(None, help="File with one API key per line: clients must send "
                                                           "`Authorization: Bearer KEY` on every /v1 route. Keys can "
                                                           "also come from GENFORGE_API_KEYS (comma-separated)."),
    max_batch: int = typer.Option(32, min=1, help="Most rows merged into one forward pass: images per batch, or text "
                                                  "choices per decode step (rows join and leave a running text "
                                                  "batch between steps); also the most one request may ask for."),
    max_wait_ms: float = typer.Option(10.0, min=0, help="How long an image or speech batch waits for more requests "
                                                        "to join (text rows join a running batch at the next step)."),
    max_queue: int = typer.Option(64, min=1, help="Requests waiting per model; beyond it, 429 with Retry-After."),
    max_queue_wait: float = typer.Option(0.0, min=0, help="Admission: refuse (429, Retry-After from the estimate) a "
                                                          "request whose estimated wait before it starts is over "
                                                          "this many seconds. 0: the request's own estimated "
                                                          "running time (text) or two full batches' time (images)."),
    encode_workers: int = typer.Option(0, min=0, help="Threads that mark, encode and sign images off the event "
                                                      "loop; 0: one per core."),
    timeout: float = typer.Option(120.0, min=1, help="Seconds a request may take, queue included (then 504)."),
    max_tokens: int = typer.Option(1024, min=1, help="Largest max_tokens a completion may ask for."),
    max_images: int = typer.Option(64, min=1, help="Most images per request (also capped by --max-batch)."),
    max_image_calls: int = typer.Option(4096, min=1, help="Most network calls an image request may cost: n x the "
                                                          "sampler's steps (x2 when guided) for diffusion, n for "
                                                          "one-pass models."),
    max_audio_calls: int = typer.Option(4096, min=1, help="Most network calls a speech request may cost: digits x "
                                                          "the family's calls per clip (diffusion: its steps)."),
    max_input_chars: int = typer.Option(1024, min=1, help="Longest `input` of a speech request, in characters (its "
                                                          "digits are capped at 64 apart)."),
    max_video_queue: int = typer.Option(16, min=1, help="Video jobs waiting per model; beyond it, 429 with Retry-After."),
    max_render_chars: int = typer.Option(32768, min=1, help="Music: characters of the text one /v1/music/render request may send."),
    max_render_seconds: float = typer.Option(300.0, min=1, help="Music: seconds of music one /v1/music/render request may render."),
    max_render_queue: int = typer.Option(16, min=1, help="Music: render requests waiting; beyond it, 429."),
    max_video_frames: int = typer.Option(64, min=1, help="Most frames per clip (the model's own bound applies too)."),
    video_expiry: float = typer.Option(3600.0, min=1, help="Seconds a finished video job and its files are kept."),
    video_timeout: float = typer.Option(600.0, min=1, help="Seconds one video job may run (then it fails)."),
    workers: int = typer.Option(1, min=1, help="Processes on this port, each with its own copy of the models "
                                               "(replicas are stateless: any balancer can front several machines)."),
    precision: str = typer.Option("auto", help="Generation precision: auto (measured per model), no (fp32), bf16, fp16."),
    threads: int = typer.Option(0, min=0, help="Intra-op threads of the torch models; 0: $OMP_NUM_THREADS, else one "
                                               "per core but one (the event loop and the encoding need a core)."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info, debug."),
    mark_key: Optional[Path] = typer.Option(None, "--mark-key", help="Key file of the invisible marks on every image, text and audio clip (default: $GENFORGE_MARK_KEY_FILE or $GENFORGE_MARK_KEY)."),
    no_mark: bool = typer.Option(False, "--no-mark", help="Serve without the invisible marks even when a key is set."),
    sign_cert: Optional[Path] = typer.Option(None, "--sign-cert", help="PEM certificate chain for a C2PA manifest in every image, audio and video file (with --sign-key)."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="PEM private key (ES256) of --sign-cert."),
) -> None:
    """Serve trained runs over HTTP with an OpenAI-compatible API and a web playground.

    Routes: GET / (playground), GET /v1/models, POST /v1/completions (text; stream=true for server-sent
    events), POST /v1/images/generations (images as base64 PNG), POST /v1/audio/speech (speech models: digits
    read aloud as WAV, FLAC, MP3 or PCM), POST /v1/videos (video models: a job; GET /v1/videos/{id} for its
    status and progress, GET /v1/videos/{id}/content for the MP4, thumbnail or spritesheet, GET /v1/videos to list,
    DELETE to cancel), GET /healthz, /readyz, /metrics
    (Prometheus), /docs (OpenAPI). Text rows join and leave a running batch between decode steps; image and
    speech requests are batched; a request whose estimated wait is over the bound gets 429 with Retry-After;
    SIGTERM drains requests in flight before exiting. Needs the `serve` extra: pip install 'genforge[serve]'.
    """
    try:
        from genforge.serving.app import ServeSettings
        from genforge.serving.server import parse_models, serve as run_server
    except ImportError as e:
        raise UserError(f"`genforge serve` needs the serve extra ({e.name} is missing). Fix: pip install "
                        "'genforge[serve]'.") from None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key_file and not os.environ.get("GENFORGE_API_KEYS"):
        err.print(f"[yellow]warning:[/] serving on {host} without API keys: anyone who can reach this port can "
                  "use the models. Set --api-key-file.", highlight=False, soft_wrap=True)
    signer_from(sign_cert, sign_key, False)  # checked here: a bad certificate is a startup error, not a 500 later
    if mark_key is not None:
        from genforge.media.watermark import KEY_FILE_ENV, KeyError_, read_key

        try:
            read_key(mark_key)
        except KeyError_ as e:
            raise UserError(str(e)) from None
        os.environ[KEY_FILE_ENV] = str(mark_key.resolve())  # the worker processes read it too
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout,
                             max_queue_wait_s=max_queue_wait, encode_workers=encode_workers,
                             max_tokens=max_tokens, max_images=max_images, max_image_calls=max_image_calls,
                             max_audio_calls=max_audio_calls, max_input_chars=max_input_chars,
                             max_video_queue=max_video_queue, max_video_frames=max_video_frames,
                             max_render_chars=max_render_chars, max_render_seconds=max_render_seconds,
                             max_render_queue=max_render_queue,
                             video_expiry_s=video_expiry, video_timeout_s=video_timeout,
                             mark=not no_mark, sign_cert=str(sign_cert) if sign_cert else None,
                             sign_key=str(sign_key) if sign_key else None)
    run_server(parse_models(runs), host=host, port=port, workers=workers, precision=precision, settings=settings,
               api_key_file=str(api_key_file) if api_key_file else None, log_level=log_level, threads=threads)
