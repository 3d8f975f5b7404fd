"""The one place where generated arrays become files or bytes (numpy + Pillow only; no torch, nothing
else from genforge), so that provenance and marks, when they come, are added in one place."""

from genforge.media.images import png_bytes

__all__ = ["png_bytes"]
