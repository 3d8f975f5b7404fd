"""The generator objects `genforge.load` returns, one per modality: images, text, audio and video."""

from genforge.generators.audio import AudioGenerator
from genforge.generators.images import ImageGenerator, ImageJob
from genforge.generators.text import TextGenerator
from genforge.generators.video import VideoGenerator

__all__ = ["AudioGenerator", "ImageGenerator", "ImageJob", "TextGenerator", "VideoGenerator"]
