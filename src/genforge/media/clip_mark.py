"""The keyed image mark in clips: written into every frame, read from every frame and pooled. numpy only.

A clip's frames are marked one by one (media/image_mark.py); the detector reads each frame under every view and
crop alignment the still-image detector tries, and scores the clip two ways, keeping the better after paying for
both: the best single frame (Bonferroni factor T, valid however the frames depend on each other) and the evidence
pooled over all frames. Pooling cannot treat the frames as independent: a still clip would turn one frame's
evidence into T copies. Its null model counts a projection that moved less than one lattice step between two
frames as the same observation (fully correlated) and one that moved farther as a new one, so a still clip scores
exactly one frame's z and evidence accrues only where content moves (or where a codec's noise differs per frame).
"""

from __future__ import annotations

import math

import numpy as np

from genforge.media.image_mark import Alignment, ImageMark, luma
from genforge.media.legacy_mark import ImageMarkV1, detect_clip_mark_v1
from genforge.media.watermark import normal_sf

FALSE_POSITIVE_RATE = 1e-4  # per clip, after every try


def mark_clips(mark: ImageMark | None, clips: np.ndarray) -> np.ndarray:
    """The keyed image mark in every frame of uint8 clips (N, T, H, W, C); clips unchanged when there is no key.
    Shared by the torch generator and the runtime."""
    if mark is None:
        return clips
    return mark.embed(clips.reshape(-1, *clips.shape[2:])).reshape(clips.shape)


def clip_scores(mark: ImageMark, frames: np.ndarray, alignment: Alignment = Alignment()) -> tuple[float, np.ndarray,
                                                                                                   int]:
    """(pooled z, per-frame z, projections scored) of uint8 (T, H, W, C) frames read with `alignment`."""
    agree, proj, live = mark.observations(luma(frames), alignment)  # (T, B, P), (T, B, P), (T, B)
    t = agree.shape[0]
    live = np.broadcast_to(live[..., None], agree.shape)
    counts = live.sum(axis=(1, 2))
    per_frame = np.where(counts > 0, agree.sum(axis=(1, 2)) / np.sqrt(np.maximum(counts, 1) / 2), 0.0)
    var = 0.0
    for i in range(t):  # pairs of frames whose projection stayed within a step count as one observation
        var += float(((np.abs(proj - proj[i]) < mark.step) & live & live[i]).sum())
    pooled = float(agree.sum() / math.sqrt(var / 2)) if var > 0 else 0.0
    return pooled, per_frame, int(counts.sum())


def detect_clip_mark(mark: ImageMark | ImageMarkV1, clip: np.ndarray, scale: int | None = None) -> dict:
    """The keyed image mark in one uint8 (T, H, W, C) clip. A known `scale` (the record's: frames enlarged by it
    when written) is undone first; otherwise the shrink views of the still detector are tried too. The p-value is
    corrected for every view, alignment and the two statistics (Bonferroni)."""
    from genforge.media.video import check_clips

    frames = check_clips(clip)[0]
    if isinstance(mark, ImageMarkV1):
        return detect_clip_mark_v1(mark, frames, scale)
    t, h, w, _ = frames.shape
    if scale and scale > 1 and h % scale == 0 and w % scale == 0:
        frames = frames.reshape(t, h // scale, scale, w // scale, scale, -1).mean(axis=(2, 4)).round().astype(np.uint8)
        h, w = h // scale, w // scale
    view_sets = [mark.views(f) for f in frames]
    if scale:
        view_sets = [vs[:1] for vs in view_sets]
    best, tries = None, 0
    for v, (name, _) in enumerate(view_sets[0]):
        stack = np.stack([vs[v][1] for vs in view_sets])
        for al in mark.alignments(*stack.shape[1:3]):
            pooled, per_frame, scored = clip_scores(mark, stack, al)
            tries += 2 if t > 1 else 1
            where = name if al == Alignment() else f"{name}, {al.top} px off the top and {al.left} off the left"
            candidates = [(normal_sf(pooled), pooled, "pooled over frames")]
            if t > 1:
                top = int(np.argmax(per_frame))
                candidates.append((min(1.0, normal_sf(per_frame[top]) * t), float(per_frame[top]), f"frame {top}"))
            p, z, how = min(candidates, key=lambda c: c[0])
            if best is None or p < best[0]:
                best = (p, z, f"{where}, {how}", pooled, per_frame, scored)
    p, z, view, pooled, per_frame, scored = best
    p = min(1.0, p * tries)
    return {"z": round(z, 2), "p_value": p, "view": view, "tries": tries, "frames": t,
            "z_pooled": round(pooled, 2), "z_best_frame": round(float(per_frame.max()), 2),
            "projections_scored": scored, "detected": p <= FALSE_POSITIVE_RATE, "key_id": mark.key.id,
            "scheme": mark.scheme, "searched": mark.searched()}
