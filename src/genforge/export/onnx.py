"""A run directory -> an export directory: one .onnx file per graph the family declares
(`Method.onnx_graphs`), and export.json with everything else the runtime needs (family, image shape, classes,
the sampling options with the run's defaults, `Method.runtime_config`, provenance, each file's SHA-256).
Nothing is pickled; the graphs take every random input (noise, seeds' draws) from outside, so the runtime owns
sampling and parity with PyTorch can be checked on the same inputs."""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

from genforge.errors import UserError

EXPORT_FILE = "export.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
DEFAULT_OPSET = 18


FORMATS = ("onnx", "ort")


def export(run_dir: str | Path, out_dir: str | Path, opset: int = DEFAULT_OPSET, select: str | None = None,
           overwrite: bool = False, fmt: str = "onnx", int8: bool = False, calibration_n: int = 64) -> Path:
    """Export a trained run to `out_dir` (written to a temporary sibling first, then renamed into place, so a
    failed export never leaves a half-written directory). Returns `out_dir`.

    fmt "ort": the graphs in onnxruntime's ORT format (its mobile/minimal builds load only that), optimised at
    the portable "basic" level. An `out_dir` ending in .zip is written as one file (stored, not compressed):
    the runtime opens it as it is, so an app ships one file. `int8`: static int8 quantization of the graphs that
    sampling runs (see `_quantize`); whether it pays is a measurement (benchmarks/export_speed.py), not a given."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}; got '{fmt}'.")
    try:
        import onnx  # noqa: F401  (the exporter's own dependencies, checked before any work)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"`genforge export` needs the export extra ({e.name} is missing). Fix: pip install "
                        "'genforge[export]'.") from None
    import torch

    from genforge.artifacts import load
    from genforge.version import __version__
    from genforge.files import sha256_file

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" and other chatter

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    single_file = out_dir.suffix.lower() == ".zip"
    if out_dir.exists() and (single_file or out_dir.is_file() or any(out_dir.iterdir())) and not overwrite:
        raise UserError(f"{out_dir} exists{'' if single_file else ' and is not empty'}. Fix: choose another --out "
                        "or pass --overwrite.")
    if not 7 <= opset <= 23:
        raise UserError(f"opset must be within 7..23 (onnxruntime's range), got {opset}.")
    from genforge.artifacts import modality_of, read_config
    from genforge.methods import get_method

    method = get_method(read_config(run_dir).get("family", "?"))
    model = load(run_dir, "cpu", select=select, precision="no")
    graphs = method.onnx_graphs(model.net)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {}
        for name, graph in graphs.items():
            path = tmp / f"{name}.onnx"
            _export_graph(graph, path, opset)
            if _pinned(graph, path):  # see `_export_graph_in_child`
                _export_graph_in_child(str(run_dir), select, name, str(path), opset)
                if _pinned(graph, path):
                    raise RuntimeError(f"the exporter fixed a dynamic dimension of {name}; its graph would not run on other sizes")
            _drop_traced_shapes(path)
            files[name] = {"file": path.name, "format": "onnx", "sha256": sha256_file(path),
                           "inputs": list(graph.inputs), "outputs": graph.outputs}
        modality = modality_of(model.meta)
        config = {
            "format_version": FORMAT_VERSION,
            "modality": modality,
            "family": model.meta.get("family"),
            "name": model.meta.get("name"),
            "family_config": method.runtime_config(model.net),
            "graphs": files,
            "opset": opset,
            "provenance": {"source_run": str(run_dir.resolve()), "weights_file": model.weights_file,
                           "weights_sha256": sha256_file(run_dir / model.weights_file), "step": model.meta.get("step"),
                           "dataset": model.meta.get("data", {}).get("dataset"), "genforge": __version__,
                           "torch": torch.__version__,
                           "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        }
        if method.modality in ("image", "audio"):  # what draw/render need: classes, options (and an image's shape)
            config.update(classes=list(model.classes), conditional=bool(model.conditional), options=model.options())
            if method.modality == "image":
                h, w, c = model.image_shape
                config["image"] = {"height": h, "width": w, "channels": c}
                if modality == "image":  # the edits it can do and their options (genforge/edits.py)
                    config["edits"] = {task: model.edit_options(task) for task in model.edit_tasks()}
        if modality == "video":  # the clip length trained on (any runs) and the playback rate
            config["video"] = {"frames": model.frames, "fps": model.fps}
        if modality == "audio":  # the codec (spectrogram statistics or mu-law), the voices and the licence
            data = model.meta.get("data", {})
            config["audio"] = {"sample_rate": model.sample_rate, "length": model.length, "codec": data.get("codec"),
                               "speakers": list(model.speakers), "license": data.get("license")}
        if modality == "music":  # what the pieces are (ABC or events) and the corpus's licences
            music = model.meta.get("data", {}).get("music", {})
            config["music"] = {"kind": music.get("kind"), "dataset": music.get("dataset"),
                               "licences": music.get("licences", {})}
        if method.modality == "text":  # the tokenizer travels as the run saved it (JSON: vocabulary or BPE merges)
            shutil.copy(run_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            config["tokenizer"] = {"file": TOKENIZER_FILE, "kind": model.tokenizer.kind,
                                   "sha256": sha256_file(tmp / TOKENIZER_FILE)}
        (tmp / EXPORT_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if int8:
            _quantize(tmp, config, calibration_n, {name: g.int8 for name, g in graphs.items()})
        for entry in files.values():
            if fmt == "ort":
                path = _to_ort(tmp / entry["file"])
                entry.update(file=path.name, format="ort", sha256=sha256_file(path))
        (tmp / EXPORT_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if single_file:
            part = tmp / "bundle.zip"
            with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as z:
                for f in sorted(tmp.iterdir()):
                    if f != part:
                        z.write(f, f.name)
            os.replace(part, out_dir)
            shutil.rmtree(tmp)
        else:
            if out_dir.exists():
                shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _quantize(tmp: Path, config: dict, n: int, schemes: dict[str, str]) -> None:
    """int8 as each graph asks (`OnnxGraph.int8`). "dynamic": int8 weights of MatMul/Gemm, activations quantized
    on the fly (language models). "static": QDQ (quantize/dequantize pairs around each quantized op,
    per-channel int8 weights, MinMax ranges) calibrated on the inputs the graph receives while the fp32 export
    draws `n` samples with its default options (the diffusion UNet sees every step of its sampler); static
    graphs that sampling never calls (a VAE's encoder) stay fp32. export.json records which were quantized."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    from genforge.files import sha256_file
    from genforge.runtime import load as load_export

    done = []
    for name in (k for k, scheme in schemes.items() if scheme == "dynamic"):
        entry = config["graphs"][name]
        src, pre = tmp / entry["file"], tmp / f"{name}.pre.onnx"
        # no offline graph optimisation here: saved optimised, the RNN graph came back with its sequence length
        # pinned to the export example's
        declared = _input_types(src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, skip_optimization=True)
        quantize_dynamic(str(pre), str(src), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        _drop_traced_shapes(src, declared)
        pre.unlink()
        entry.update(sha256=sha256_file(src), int8={"method": "dynamic: int8 MatMul/Gemm weights, activations "
                                                              "quantized per call", "calibration": None})
        done.append(name)
    if not any(scheme == "static" for scheme in schemes.values()):
        config["int8"] = sorted(done)
        return
    model = load_export(tmp)
    seen: dict[str, list[dict]] = {}
    for name, run in list(model.family.graphs.items()):
        def recording(run=run, name=name, **inputs):
            seen.setdefault(name, []).append({k: v.copy() for k, v in inputs.items()})
            return run(**inputs)
        model.family.graphs[name] = recording
    model.generate(n, seed=0, batch_size=max(1, n // 4))

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    for name, batches in seen.items():
        if schemes.get(name) != "static":
            continue
        entry = config["graphs"][name]
        src, pre = tmp / entry["file"], tmp / f"{name}.pre.onnx"
        declared = _input_types(src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(src), Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=["Conv", "ConvTranspose", "MatMul", "Gemm"],
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        _drop_traced_shapes(src, declared)
        pre.unlink()
        entry.update(sha256=sha256_file(src), int8={
            "method": "static QDQ of Conv, ConvTranspose, MatMul and Gemm: per-channel int8 weights, int8 "
                      "activations, MinMax ranges",
            "calibration": f"{len(batches)} batches of the inputs this graph gets while {n} samples are drawn"})
    config["int8"] = sorted(done + [k for k in seen if schemes.get(k) == "static"])


def _export_graph(graph, path: Path, opset: int) -> None:
    import torch

    dynamic = graph.dynamic or {k: {0: "batch"} for k in graph.inputs}
    dims = {name: torch.export.Dim(name, min=0 if name in graph.may_be_empty else 1, max=65_536)
            for spec in dynamic.values() for name in spec.values()}
    shapes = tuple({axis: dims[name] for axis, name in dynamic.get(k, {}).items()} for k in graph.inputs)
    params = inspect.signature(graph.module.forward).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):  # torch.export sees *args as one tuple argument
        fixed = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        shapes = (*shapes[:fixed], shapes[fixed:])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        torch.onnx.export(graph.module.eval(), tuple(graph.inputs.values()), str(path), input_names=list(graph.inputs),
                          output_names=graph.outputs, dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)


def _pinned(graph, path: Path) -> bool:
    """Whether a dimension declared dynamic came out as a fixed size."""
    import onnx

    dynamic = graph.dynamic or {k: {0: "batch"} for k in graph.inputs}
    declared = {i.name: i.type.tensor_type.shape.dim for i in onnx.load(str(path)).graph.input}
    return any(not declared[k][axis].dim_param for k, spec in dynamic.items() for axis in spec)


def _export_graph_in_child(run_dir: str, select, name: str, path: str, opset: int) -> None:
    """Export one graph in a fresh interpreter. In torch 2.13, the second torch.export of an nn.LSTM in a process
    traces its sequence length as a constant (the first does not), so an RNN exported after any other export
    would only run on the example's length; a fresh process exports it as the first one does."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(run_dir, select, name, path, opset))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"exporting {name} in a fresh process failed (exit code {proc.exitcode})")


def _child(run_dir: str, select, name: str, path: str, opset: int) -> None:
    from genforge.artifacts import load
    from genforge.artifacts import read_config
    from genforge.methods import get_method

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model = load(run_dir, "cpu", select=select, precision="no")
    _export_graph(get_method(read_config(run_dir)["family"]).onnx_graphs(model.net)[name], Path(path), opset)


def _drop_traced_shapes(path: Path, inputs: dict | None = None) -> None:
    """Forget the shapes recorded for intermediate values and outputs: tracing can note the example's sizes there
    (the LSTM's sequence length, for one) although the inputs are dynamic, and the int8 tools' shape inference
    then pins an input to that size. `inputs`: input declarations (`_input_types` of the graph as exported, its
    dynamic dimensions intact) to restore. onnxruntime infers the rest anew when it loads the graph."""
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    for i in model.graph.input:
        if inputs and i.name in inputs:
            i.type.CopyFrom(inputs[i.name])
    onnx.save(model, str(path))


def _input_types(path: Path) -> dict:
    import onnx

    return {i.name: i.type for i in onnx.load(str(path)).graph.input}


def _to_ort(path: Path) -> Path:
    """path.onnx -> path.ort (the .onnx removed), through onnxruntime's own serialiser."""
    import onnxruntime as ort

    out = path.with_suffix(".ort")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable across CPUs
    so.optimized_model_filepath = str(out)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    path.unlink()
    return out
