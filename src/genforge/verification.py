"""`genforge verify`: what a file (or a piece of text) says, and what its pixels, samples or tokens prove, about
being generated. Torch-free: a verifier ships with the runtime.

Three independent layers, each reported on its own: the embedded metadata (XMP; a FLAC file's Vorbis comments; a
text file's sidecar; GIF clips have none), the C2PA manifest (and whether its signature and hashes hold), and the
keyed mark (needs the key; text also needs the model's tokenizer; a clip's is pooled over its frames). The verdict
is the strongest finding: a broken C2PA manifest beats everything (the file was altered after signing), then any
layer that says "generated".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.errors import UserError
from genforge.media.audio import audio_format, decode_audio
from genforge.media.audio_mark import AudioMark
from genforge.media.images import decode
from genforge.media.music import MUSIC_SUFFIXES, music_format, music_provenance
from genforge.media.provenance import SOURCE_TYPES, c2pa_read, parse_xmp
from genforge.media.text import read_sidecar
from genforge.media.clip_mark import detect_clip_mark
from genforge.media.video import clip_format, clip_layout, decode_clip
from genforge.media.video_containers import mp4_xmp
from genforge.media.text_mark import TextMark, TournamentMark
from genforge.media.image_mark import ImageMark
from genforge.media.legacy_mark import ImageMarkV1
from genforge.media.watermark import THRESHOLD_Z, MarkKey, normal_sf

GENERATED, NOT_FOUND, TAMPERED = 0, 1, 3  # exit codes (2 is the CLI's usage error)


@dataclass
class Report:
    kind: str  # image | audio | video | text
    source: str
    metadata: dict | None = None
    c2pa: dict | None = None
    c2pa_note: str = ""
    marks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> int:
        if self.c2pa is not None and self.c2pa.get("state") == "Invalid":
            return TAMPERED
        if self.metadata and self.metadata.get("digital_source_type") in SOURCE_TYPES:
            return GENERATED
        if self.c2pa is not None and self.c2pa.get("source_type") in SOURCE_TYPES:
            return GENERATED
        if any(m.get("detected") for m in self.marks):
            return GENERATED
        return NOT_FOUND

    @property
    def edit_of(self) -> list[dict]:
        """What an edit started from ({title, sha256} each), as the signed manifest (else the metadata) says; [] for
        a file that was generated from scratch or says nothing."""
        c2pa = self.c2pa or {}
        if c2pa.get("action") == "edited" and c2pa.get("ingredients"):
            return [{"title": i.get("title"), "sha256": i.get("sha256")} for i in c2pa["ingredients"]]
        meta = self.metadata or {}
        if meta.get("action") == "edited" and isinstance(meta.get("ingredients"), list):
            return [{"title": i.get("title"), "sha256": i.get("sha256")} for i in meta["ingredients"]
                    if isinstance(i, dict)]
        return []

    def as_dict(self) -> dict:
        names = {GENERATED: "generated", NOT_FOUND: "no provenance found", TAMPERED: "tampered"}
        return {"source": self.source, "kind": self.kind, "verdict": names[self.verdict], "exit_code": self.verdict,
                "metadata": self.metadata, "c2pa": self.c2pa, "c2pa_note": self.c2pa_note or None,
                "edit_of": self.edit_of, "marks": self.marks, "notes": self.notes}


def verify(target: str, keys: list[MarkKey], model: str | Path | None = None) -> Report:
    """Verify a file path, or (when `target` is not a file) the text itself."""
    path = Path(target)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # text too long (or with NUL) to be a path
        is_file = False
    if is_file:
        data = path.read_bytes()
        music = music_format(data, path.suffix)
        if music is not None:
            return _verify_music(data, path, music)
        if audio_format(data) is not None:
            report = _verify_audio(data, path, keys)
            if report is not None:
                return report
        if clip_format(data) is not None or path.suffix.lower() in CLIP_SUFFIXES:
            report = _verify_clip(data, path, keys)
            if report is not None:
                return report
        try:
            pixels, xmp, fmt = decode(data)
        except ValueError as e:
            signed = _c2pa_or_none(data)
            if signed is not None:  # a signed image whose pixels no longer decode: altered after signing
                report = Report("image", f"{path} (undecodable image)", c2pa=signed)
                report.notes.append(f"the image data does not decode: {e}")
                return report
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{target} is neither an image Pillow reads, audio (WAV, FLAC, MP3) nor UTF-8 "
                                "text.") from None
            return _verify_text(text, str(path), keys, model, read_sidecar(path))
        report = _verify_image(data, pixels, xmp, f"{path} ({fmt})", keys)
        _verify_noise_mark(report, pixels, keys, model)
        return report
    if len(target) < 200 and ("/" in target or target.endswith((".png", ".jpg", ".jpeg", ".webp", ".txt", ".wav",
                                                                 ".flac", ".mp3", ".ogg") + CLIP_SUFFIXES
                                                                 + tuple(MUSIC_SUFFIXES))):
        raise UserError(f"{target}: no such file. (To verify text itself, pass the text; quote it.)")
    return _verify_text(target, "text given", keys, model, None)


def _verify_image(data: bytes, pixels, xmp, source: str, keys: list[MarkKey]) -> Report:
    report = Report("image", source, metadata=parse_xmp(xmp))
    try:
        report.c2pa = c2pa_read(data)
    except ImportError:
        report.c2pa_note = "C2PA not checked: pip install 'genforge[provenance]'"
    parameters = ((report.metadata or {}).get("parameters") or {}) if report.metadata else {}
    grid, strip = parameters.get("grid"), parameters.get("filmstrip")
    for key in keys:
        if isinstance(strip, dict):
            report.marks.append(_either(_image_marks(key, report.metadata), lambda m: _filmstrip_marks(m, pixels, strip)))
        elif grid:
            report.marks.append(_either(_image_marks(key, report.metadata), lambda m: _grid_marks(m, pixels, grid)))
        else:
            report.marks.append(_either(_image_marks(key, report.metadata), lambda m: m.detect(pixels)))
    if not keys:
        report.notes.append("no mark key given (--key or $GENFORGE_MARK_KEY_FILE): the invisible mark was not checked")
    return report


def _image_marks(key: MarkKey, metadata: dict | None) -> list:
    """The image mark versions to read: the one the record names; version 1 for a record that names a mark but no
    scheme (written before version 2); both when there is no record (stripped, or never written)."""
    scheme = (metadata or {}).get("mark_scheme")
    if scheme == ImageMarkV1.scheme:
        return [ImageMarkV1(key)]
    if scheme == ImageMark.scheme:
        return [ImageMark(key)]
    if (metadata or {}).get("mark"):
        return [ImageMarkV1(key)]
    return [ImageMark(key), ImageMarkV1(key)]


def _either(marks: list, read) -> dict:
    """`read(mark)` under each version; the strongest finding, its p-value multiplied by the number of versions
    tried (Bonferroni) and judged against that version's own threshold."""
    results = [(read(m), m) for m in marks]
    if len(results) == 1:
        return results[0][0]
    found, mark = min(results, key=lambda r: r[0].get("p_value", 1.0) if r[0].get("p_value") is not None else 1.0)
    if found.get("p_value") is None:  # grids and filmstrips: a majority of tiles, each judged on its own
        found, mark = max(results, key=lambda r: (r[0].get("detected", False), r[0].get("tiles_detected", 0)))
        return {**found, "versions_tried": len(results)}
    p = min(1.0, found["p_value"] * len(results))
    return {**found, "p_value": p, "detected": p <= mark.false_positive_rate, "versions_tried": len(results)}


def _verify_noise_mark(report: Report, pixels, keys: list[MarkKey], model) -> None:
    """The diffusion noise mark (diffusion/noise_mark.py) under each key: the image inverted to its starting noise
    by `model` (a diffusion run, loaded with torch, or an export, on onnxruntime) and scored; one entry per key in
    `report.marks`, {"mark": "noise", ...}, so the verdict counts it as it counts the post-hoc mark."""
    if not keys:
        return
    family = (report.metadata or {}).get("family")
    planted = ((report.metadata or {}).get("parameters") or {}).get("noise_mark") if report.metadata else None
    if model is None and family != "diffusion" and not planted:
        return  # no record, or it says a GAN, VAE...: only say what was not checked where it could matter
    if model is None:
        report.notes.append("the diffusion noise mark was not checked: give --model RUN_OR_EXPORT (the diffusion run "
                            "or export that made it; its sampler is run backwards)")
        return
    gen = _noise_mark_model(model)
    if gen is None:
        report.notes.append(f"--model {model}: not a diffusion image model, so the noise mark was not checked")
        return
    for key in keys:
        report.marks.append(gen.detect_noise_mark(pixels, key))


_NOISE_MODELS: dict[str, object] = {}


def _noise_mark_model(model):
    """The generator of a diffusion image run or export (cached per path), or None for any other model."""
    from genforge.runtime.loading import is_export

    model = Path(model)
    if str(model) in _NOISE_MODELS:
        return _NOISE_MODELS[str(model)]
    if is_export(model):
        from genforge.runtime import load as load_export

        gen = load_export(model)
    elif (model / "config.json").is_file():
        import genforge  # torch: only for a run directory

        gen = genforge.load(model, precision="no")
    else:
        raise UserError(f"--model {model}: not a run or export directory.")
    family = (getattr(gen, "meta", None) or {}).get("family")
    ok = family == "diffusion" and getattr(gen, "modality", "") == "image" and not getattr(gen, "low_res", 0)
    _NOISE_MODELS[str(model)] = gen if ok else None
    return _NOISE_MODELS[str(model)]


def _verify_audio(data: bytes, path: Path, keys: list[MarkKey]) -> Report | None:
    """A WAV, FLAC or MP3 file: its embedded provenance, C2PA manifest, and the audio mark under each key (searched
    over alignments, so a trimmed clip is still found). None when the bytes only looked like audio."""
    fmt = audio_format(data)
    try:
        samples, rate, meta = decode_audio(data)
    except ValueError as e:
        signed = _c2pa_or_none(data)
        if signed is not None:  # a signed file whose samples no longer decode: altered after signing
            report = Report("audio", f"{path} (undecodable {fmt.upper()})", c2pa=signed)
            report.notes.append(f"the audio data does not decode: {e}")
            return report
        if path.suffix.lower() in (".wav", ".flac", ".mp3", ".ogg"):
            raise UserError(f"{path}: {e}; is it a complete {fmt.upper()} file?") from None
        return None
    report = Report("audio", f"{path} ({fmt.upper()}, {rate} Hz, {len(samples) / rate:.2f} s)", metadata=meta)
    try:
        report.c2pa = c2pa_read(data)
    except ImportError:
        report.c2pa_note = "C2PA not checked: pip install 'genforge[provenance]'"
    for key in keys:
        report.marks.append(AudioMark(key).detect(samples, rate))
    if not keys:
        report.notes.append("no mark key given (--key or $GENFORGE_MARK_KEY_FILE): the inaudible mark was not checked")
    return report


def _verify_music(data: bytes, path: Path, fmt: str) -> Report:
    """A MIDI, ABC or MusicXML file: the record in its text event or comment (media/music.py). These formats have
    no C2PA binding, and music carries no keyed mark (a text mark would change the notes)."""
    report = Report("music", f"{path} ({fmt.upper()})", metadata=music_provenance(data, fmt))
    report.c2pa_note = f"none: {fmt.upper()} files have no C2PA binding (a rendered WAV carries one)"
    report.notes.append("music carries no keyed mark: biasing a tune's tokens would change its notes")
    return report


CLIP_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif", ".apng")


def _verify_clip(data: bytes, path: Path, keys: list[MarkKey]) -> Report | None:
    """A clip (MP4 or another FFmpeg container; animated WebP, GIF, APNG): its XMP record (none in GIF), C2PA
    manifest, and the keyed image mark pooled over its frames (media.video.detect_clip_mark). None when the bytes
    are a still image after all (a one-frame GIF or APNG), which the image path then reports."""
    fmt = clip_format(data)
    try:
        frames, fps, record, fmt = decode_clip(data)
    except ImportError as e:  # an MP4 without PyAV: the metadata and manifest are still readable
        report = Report("video", f"{path} ({(fmt or '?').upper()}, frames not decoded)",
                        metadata=parse_xmp(mp4_xmp(data)) if fmt == "mp4" else None)
        report.notes.append(f"{e}: the mark was not checked")
        _read_c2pa(report, data)
        return report
    except ValueError as e:
        signed = _c2pa_or_none(data)
        if signed is not None:  # a signed clip whose frames no longer decode: altered after signing
            report = Report("video", f"{path} (undecodable {(fmt or path.suffix.lstrip('.')).upper()})", c2pa=signed)
            report.notes.append(f"the clip does not decode: {e}")
            return report
        if path.suffix.lower() in CLIP_SUFFIXES:
            raise UserError(f"{path}: {e}; is it a complete {path.suffix.lstrip('.').upper()} clip?") from None
        return None
    if len(frames) == 1 and fmt in ("png", "gif", "webp"):
        return None
    t, h, w, _ = frames.shape
    report = Report("video", f"{path} ({fmt.upper()}, {t} frames of {h}x{w}, {fps:g} fps)", metadata=record)
    _read_c2pa(report, data)
    if fmt == "gif":
        report.notes.append("GIF has no place for XMP metadata: its provenance is the C2PA manifest (when signed) "
                            "and the mark")
    layout = clip_layout(record)
    scale = layout.get("scale")
    if scale is None or [h, w] != [s * scale for s in layout.get("size", [])]:
        scale = None  # no record, or frames that are not what it describes: try the enlargements
    for key in keys:
        report.marks.append(_either(_image_marks(key, record), lambda m: detect_clip_mark(m, frames, scale)))
    if not keys:
        report.notes.append("no mark key given (--key or $GENFORGE_MARK_KEY_FILE): the invisible mark was not checked")
    return report


def _read_c2pa(report: Report, data: bytes) -> None:
    try:
        report.c2pa = c2pa_read(data)
    except ImportError:
        report.c2pa_note = "C2PA not checked: pip install 'genforge[provenance]'"


def _filmstrip_marks(mark: ImageMark, pixels, strip: dict) -> dict:
    """A filmstrip written by media.video.save_filmstrip: each row cut back into its clip and the mark pooled over
    its frames; detected when most clips are."""
    empty = {"key_id": mark.key.id, "detected": False, "tiles": 0, "tiles_detected": 0, "z_median": None}
    try:
        n, t, (h, w) = int(strip["clips"]), int(strip["frames"]), (int(v) for v in strip["tile"])
        pad, scale = int(strip.get("pad", 2)), max(1, int(strip.get("scale", 1)))
    except (KeyError, TypeError, ValueError):
        return empty
    if min(h, w, pad + 1, t) < 1:
        return empty
    pixels = pixels[::scale, ::scale]
    n = min(n, (pixels.shape[0] - pad) // (h + pad))  # no more than the image holds, whatever the record says
    t = min(t, (pixels.shape[1] - pad) // (w + pad))
    found = []
    for i in range(n):
        y = pad + i * (h + pad)
        clip = [pixels[y:y + h, pad + j * (w + pad):pad + j * (w + pad) + w] for j in range(t)]
        if all(f.shape[:2] == (h, w) for f in clip) and clip:
            found.append(detect_clip_mark(mark, np.stack(clip), 1))
    hits = sum(c["detected"] for c in found)
    return {"key_id": mark.key.id, "detected": bool(found) and hits * 2 > len(found), "tiles": len(found),
            "tiles_detected": hits, "z_median": sorted(c["z"] for c in found)[len(found) // 2] if found else None,
            "clips": True}


def _c2pa_or_none(data: bytes) -> dict | None:
    try:
        return c2pa_read(data)
    except ImportError:
        return None


def _grid_marks(mark: ImageMark, pixels, grid: dict) -> dict:
    """A grid written by `genforge sample`: each tile scored on its own; detected when most tiles are."""
    h, w = grid["tile"]
    pad, scale, cols, n = grid.get("pad", 2), grid.get("scale", 1), grid["columns"], grid["images"]
    if scale > 1:
        pixels = pixels[::scale, ::scale]
    tiles = []
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        tile = pixels[y:y + h, x:x + w]
        if tile.shape[:2] == (h, w):
            tiles.append(mark.detect(tile))
    found = sum(t["detected"] for t in tiles)
    return {"key_id": mark.key.id, "detected": bool(tiles) and found * 2 > len(tiles), "tiles": len(tiles),
            "tiles_detected": found, "z_median": sorted(t["z"] for t in tiles)[len(tiles) // 2] if tiles else None}


def _tokenizer(model: str | Path):
    from genforge.runtime.loading import is_export
    from genforge.tokenizers import load_tokenizer

    model = Path(model)
    if (model / "tokenizer.json").is_file():
        return load_tokenizer(model)
    if is_export(model):
        from genforge.runtime import load

        gen = load(model)
        if gen.modality == "text":
            return gen.tokenizer
    raise UserError(f"--model {model}: not a text model's run or export directory (no tokenizer.json).")


def _verify_text(text: str, source: str, keys: list[MarkKey], model, sidecar: dict | None) -> Report:
    report = Report("text", source, metadata=sidecar)
    if not keys:
        report.notes.append("no mark key given (--key or $GENFORGE_MARK_KEY_FILE): the text mark was not checked")
        return report
    if model is None:
        report.notes.append("the text mark was not checked: give --model RUN_OR_EXPORT (the tokenizer it was made with)")
        return report
    tokenizer = _tokenizer(model)
    ids = tokenizer.encode(text)
    start = 0
    prompt = ((sidecar or {}).get("parameters") or {}).get("prompt")
    if prompt and text.startswith(prompt):
        start = len(tokenizer.encode(prompt))  # the prompt is context, not generated
    named = (sidecar or {}).get("mark_scheme")  # "" or absent in texts written before schemes were recorded
    for key in keys:
        report.marks.append(_text_mark_score(key, tokenizer.vocab_size, ids, start, named))
        if report.marks[-1]["detected"]:
            report.notes.append(f"text mark (key {key.id}): the {report.marks[-1]['scheme']} scheme matched")
    return report


def _text_mark_score(key: MarkKey, vocab: int, ids: list[int], start: int, named: str | None) -> dict:
    """The text mark under `key`: the scheme a sidecar names, else both (the tournament texts are generated with
    now, the green-list mark of earlier texts), the better one reported with its p-value doubled (Bonferroni) and
    detected when that is at most z = 4's; "schemes" has each scheme's z."""
    marks = [TournamentMark(key, vocab), TextMark(key, vocab)]
    if named in {m.scheme for m in marks}:
        return next(m for m in marks if m.scheme == named).score(ids, start)
    scores = [m.score(ids, start) for m in marks]
    best = min(scores, key=lambda r: r["p_value"])
    p = min(1.0, best["p_value"] * len(scores))
    return {**best, "p_value": p, "detected": best["tokens_scored"] > 0 and p <= normal_sf(THRESHOLD_Z),
            "schemes": {r["scheme"]: r["z"] for r in scores}}
