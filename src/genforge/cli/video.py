"""`genforge sample` of a video model: clips as files (MP4, WebP, GIF, APNG), a filmstrip, or an array."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genforge.cli.common import out
from genforge.cli.sampling import _sampling_progress
from genforge.errors import UserError
from genforge.labels import cycle_labels

STILLS = (".png", ".jpg", ".jpeg")  # --out x.png: a filmstrip (an animated PNG is x.apng)
CLIPS = (".mp4", ".webp", ".gif", ".apng")


def sample_video(model, n: int | None, out_arg: str | None, label, seed, fps: float | None, scale: int | None, fmt: str,
                 options: dict, signer, metadata: bool, progress_bar: bool) -> None:
    if out_arg is None:
        raise UserError("--out is required for a video model: clips/ (one MP4 per clip), x.mp4, x.webp, x.gif or "
                        "x.apng (a clip; several are numbered), x.png (a filmstrip) or x.npy (uint8 N,T,H,W,C).")
    n = 4 if n is None else n
    path = Path(out_arg)
    as_dir = out_arg.endswith(("/", "\\")) or path.is_dir()
    suffix = path.suffix.lower()
    if not as_dir and suffix not in (*STILLS, *CLIPS, ".npy"):
        raise UserError(f"--out must end in {', '.join(CLIPS)} (clips), .png (a filmstrip), .npy or / (a folder of "
                        f"clips); got '{out_arg}'.")
    folder_fmt = "mp4" if fmt == "png" else fmt.lower().lstrip(".")
    if as_dir and f".{folder_fmt}" not in CLIPS:
        raise UserError(f"--format for a folder of clips must be mp4, webp, gif or apng; got '{fmt}'.")
    if scale is not None and not 1 <= scale <= 16:
        raise UserError(f"--scale must be 1..16; got {scale}.")
    if fps is not None and not 0 < fps <= 120:
        raise UserError(f"--fps must be within 0..120 (GIF plays at most 50 fps in browsers); got {fps}.")
    fps = fps or model.fps
    labels = cycle_labels(label, n)
    with _sampling_progress(progress_bar, n, "clips") as update:
        clips = model.generate(n, seed=seed, labels=labels, progress=update, **options)
    record = model.record(seed, n=n, labels=labels, fps=fps, **options) if metadata else None
    from genforge.media.video import mp4_scale, save_filmstrip, write_clips

    mp4 = (as_dir and folder_fmt == "mp4") or (suffix == ".mp4" and not as_dir)
    if scale is None:
        scale = mp4_scale(*clips.shape[2:4]) if mp4 else 1

    if suffix == ".npy" and not as_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, clips)
        written = [path]
    elif suffix in STILLS and not as_dir:
        written = [save_filmstrip(clips, path, scale=scale, record=record, signer=signer)]
    else:  # a folder: clip_000.mp4, ...; x.mp4 for one clip, x_000.mp4, ... for several
        written = write_clips(clips, out_arg, fps, record=record, signer=signer, scale=scale,
                              fmt=folder_fmt if as_dir else None)
    shape = "x".join(map(str, clips.shape[1:4]))
    where = written[0] if len(written) == 1 else f"{len(written)} files in {written[0].parent}"
    out.print(f"{n} clip{'s' * (n != 1)} ({shape}, T x H x W) at {fps:g} fps -> {where}", highlight=False, soft_wrap=True)
