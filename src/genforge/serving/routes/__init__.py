"""The /v1 routes, one module per API area. Each offers `router(server) -> APIRouter` (its routes, closing over
the app's `common.Server`) and `describe(gen, settings) -> protocol.ModelInfo` (its models' entry in /v1/models:
what the playground builds its form from). Music models compose through completions' route (they are text
models) and have music's own route for rendering. Image models' edits (/v1/images/edits and /variations) have a
module of their own, `edits`."""

from genforge.serving.routes import audio, completions, edits, images, music, videos

# modality -> the module that serves it (and describes its models)
BY_MODALITY = {"text": completions, "image": images, "audio": audio, "video": videos, "music": music}

__all__ = ["BY_MODALITY", "audio", "completions", "edits", "images", "music", "videos"]
