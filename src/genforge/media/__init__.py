"""The one place where generated arrays become files or bytes, with their provenance (XMP, C2PA) and keyed marks
(numpy + Pillow, soundfile and soxr for audio, PyAV for MP4; no torch, nothing else from genforge)."""

from genforge.media.audio import decode_audio, encode_audio, save_spectrogram_grid, write_audio
from genforge.media.audio_mark import AudioMark
from genforge.media.images import decode, encode, png_bytes, save_grid, write_images
from genforge.media.provenance import SOURCE_TYPE, Record, Signer
from genforge.media.text import write_text
from genforge.media.clip_mark import detect_clip_mark
from genforge.media.video import decode_clip, encode_clip, filmstrip, save_filmstrip, write_clips
from genforge.media.text_mark import TextMark
from genforge.media.image_mark import ImageMark
from genforge.media.watermark import MarkKey, read_key

__all__ = ["decode", "encode", "png_bytes", "save_grid", "write_images", "SOURCE_TYPE", "Record", "Signer",
           "write_text", "ImageMark", "MarkKey", "TextMark", "read_key", "AudioMark", "decode_audio", "encode_audio",
           "save_spectrogram_grid", "write_audio", "decode_clip", "detect_clip_mark", "encode_clip", "filmstrip",
           "save_filmstrip", "write_clips"]
