"""The torch-free runtime: loads a `genforge export` (a directory or one .zip file) and generates with
onnxruntime and numpy, with the API of `genforge.load`: images (`generate(n, seed, labels, **options)`,
`options()`, `classes`) and text (`generate(prompt, max_new_tokens, temperature, top_k, top_p, seed, stop)`,
`stream(...)`). It never imports torch (tests/test_export.py runs it in an environment without torch), so a
laptop app, a torch-less server or a device ships onnxruntime (tens of MB) instead of PyTorch (hundreds)."""

from genforge.runtime.images import ExportedImageModel
from genforge.runtime.loading import is_export, load
from genforge.runtime.text import ExportedTextModel

__all__ = ["ExportedImageModel", "ExportedTextModel", "is_export", "load"]
