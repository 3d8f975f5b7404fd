"""The generator objects `genforge.load` returns, one per modality: images, text and audio."""

from genforge.generators.audio import AudioGenerator
from genforge.generators.images import ImageGenerator, ImageJob
from genforge.generators.text import TextGenerator

__all__ = ["AudioGenerator", "ImageGenerator", "ImageJob", "TextGenerator"]
