"""`genforge export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genforge.cli.common import app, out, user_errors


@app.command("export")
@user_errors
def export_run(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genforge train`: images, text, speech, video or music."),
    out_dir: Path = typer.Option(..., "--out", help="The export directory to write (one graph file per network and "
                                                    "export.json), or a path ending in .zip to write all of it as one file."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, or ort: onnxruntime's format for its mobile and minimal builds."),
    opset: int = typer.Option(18, help="ONNX opset of the graphs."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 quantization (QDQ) of the graphs sampling runs, "
                                                    "calibrated on the inputs they get while the export samples. "
                                                    "Measure before you ship it: benchmarks/RESULTS.md has what it "
                                                    "cost and saved here."),
    select: Optional[str] = typer.Option(None, help="best or last weights (default: best when the run kept one)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it exists and is not empty."),
) -> None:
    """Export a trained model to ONNX for the torch-free runtime (`genforge sample EXPORT_DIR`, genforge.runtime).

    The graphs hold the networks only (GAN generator; VAE decoder and encoder; diffusion UNet; a language model's
    prefill and decode steps with its KV cache; a WaveNet's step with its queues), with dynamic batch dimensions;
    sampling (noise, labels, the diffusion sampler loop, token sampling, Griffin-Lim) runs in the runtime, in numpy.
    export.json holds the family, data shape, classes or tokenizer, sampling options with the run's defaults,
    provenance and each file's SHA-256. Needs the export extra: pip install 'genforge[export]'."""
    from genforge.export import export
    from genforge.runtime import load as load_export

    path = export(run_dir, out_dir, opset=opset, select=select, overwrite=overwrite, fmt=fmt, int8=int8)
    config = load_export(path).config  # and proves that onnxruntime loads what was written
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())
    graphs = ", ".join(g["file"] for g in config["graphs"].values())
    out.print(f"exported {config['family']} model ({config['name']}, step {config['provenance']['step']}) to {path}: "
              f"{graphs}{' (int8: ' + (', '.join(config['int8']) or 'none: not offered for this model') + ')' if 'int8' in config else ''}; "
              f"{size / 1e6:.1f} MB in all", soft_wrap=True)
