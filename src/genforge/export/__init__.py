"""`genforge export`: a trained run as ONNX graphs plus a JSON config, for the torch-free runtime
(genforge/runtime) on a laptop, a server without torch, or a device."""

from genforge.export.onnx import EXPORT_FILE, FORMAT_VERSION, export

__all__ = ["EXPORT_FILE", "FORMAT_VERSION", "export"]
