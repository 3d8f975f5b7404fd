"""The /v1 routes, one module per API area. Each offers `router(server) -> APIRouter` (its routes, closing over
the app's `common.Server`) and `describe(gen, settings) -> protocol.ModelInfo` (its models' entry in /v1/models:
what the playground builds its form from)."""

from genforge.serving.routes import audio, completions, images, videos

# modality -> the module that serves it (and describes its models)
BY_MODALITY = {"text": completions, "image": images, "audio": audio, "video": videos}

__all__ = ["BY_MODALITY", "audio", "completions", "images", "videos"]
