"""The torch-free runtime: loads a `genforge export` directory and generates with onnxruntime and numpy, with
the API of `genforge.load` (`generate(n, seed, labels, **options)`, `options()`, `classes`). It never imports
torch (tests/test_export.py runs it in an environment without torch), so a laptop app, a torch-less server or
a device ships onnxruntime (tens of MB) instead of PyTorch (hundreds)."""

from genforge.runtime.images import ExportedImageModel, is_export, load

__all__ = ["ExportedImageModel", "is_export", "load"]
