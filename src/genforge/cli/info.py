"""`genforge info`, `genforge presets` and `genforge data info`: what this machine, genforge and a dataset hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from genforge.cli.common import app, data_app, out, user_errors


@app.command()
@user_errors
def info(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    no_measure: bool = typer.Option(False, "--no-measure", help="Skip the matrix-product timings (about 1 s)."),
):
    """What this machine offers: CPU and its bf16/AMX flags or GPU, torch and threads, measured fp32 and bf16
    matrix-product rates, memory, data and cache folders, optional components, cached precision verdicts.
    Paste it into a bug report."""
    from genforge.doctor import machine_report

    report = machine_report(measure=not no_measure)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    cpu, t = report["cpu"], report["torch"]
    lines = [
        ("genforge", f"{report['genforge']} (Python {report['python']}, {report['platform']})"),
        ("CPU", f"{cpu['model']}, {cpu['cores']} cores"),
        ("CPU flags", f"{' '.join(cpu['flags']) or 'none of interest'}; torch kernels: {cpu['torch_capability']}; "
                      f"oneDNN bf16 kernels: {'yes' if cpu['onednn_bf16_kernels'] else 'no'}"),
        ("GPU", "none" if not report["gpu"] else
         f"{report['gpu']['name']} x{report['gpu']['count']}, {report['gpu']['memory_gib']} GiB, bf16 {report['gpu']['bf16']}"),
        ("torch", f"{t['version']}, {t['threads']} threads ({t['interop_threads']} inter-op)"),
    ]
    if "matmul_gflops" in report:
        m = report["matmul_gflops"]
        lines.append(("matmul", f"fp32 {m['fp32']:,.1f} GFLOP/s, bf16 {m['bf16']:,.1f} GFLOP/s "
                                f"(bf16 at {m['bf16'] / max(m['fp32'], 1e-9):.2f}x fp32)"))
    mem = report["memory"]
    lines += [
        ("memory", f"{mem.get('MemAvailable', '?')} free of {mem.get('MemTotal', '?')}"),
        ("auto precision", "; ".join(f"{k}: times " + " and ".join({"no": "fp32"}.get(x, x) for x in v)
                                     + ("" if len(v) > 1 else " only (no fast bf16 kernels here)")
                                     for k, v in report["auto_precision_candidates"].items())),
        ("data folder", report["directories"]["data"]),
        ("cache folder", report["directories"]["cache"]),
    ]
    table = Table(box=None, show_header=False)
    for k, v in lines:
        table.add_row(f"[bold]{k}[/]", v)
    out.print(table)
    comps = Table("component", "version", "used for", box=None)
    for dist, c in report["components"].items():
        comps.add_row(dist, c["version"] or "[dim]not installed[/]", c["for"])
    out.print(comps)
    verdicts = report["cached_precision_verdicts"]
    if verdicts:
        vt = Table("cached precision verdict", "used", "speed vs fp32", "date", box=None)
        for key, v in verdicts.items():
            speeds = ", ".join(f"{k} {x:.2f}x" for k, x in (v.get("speed_vs_fp32") or {}).items() if k != "no")
            vt.add_row(key, str(v.get("used")), speeds, str(v.get("date")))
        out.print(vt)


@app.command()
@user_errors
def presets():
    """List the bundled presets."""
    from genforge.training import list_presets

    table = Table("preset", "description", box=None)
    for name, desc in list_presets().items():
        table.add_row(name, desc)
    out.print(table)


@data_app.command("info")
@user_errors
def data_info(
    name: str = typer.Argument(..., help="mnist, fashion-mnist, cifar10, cifar10-jpeg, mnist-mini, fsdd (spoken digits), moving-mnist (clips), folk-abc or bach-chorales (music), or folder:PATH"),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Counts, shape, classes and checksum status of a dataset (downloads nothing)."""
    from genforge.data import dataset_info

    info = dataset_info(name, data_dir)
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    out.print(f"[bold]{info.get('name', name)}[/]  {info.get('path', '')}")
    for split, s in (info.get("splits") or {}).items():
        if "characters" in s:  # music
            out.print(f"  {split}: {s['count']:,} {s['unit']}, {s['characters']:,} characters")
        elif "seconds" in s:  # audio
            rates = ", ".join(f"{r} Hz" for r in (s.get("sample_rates") or {}))
            out.print(f"  {split}: {s.get('count')} clips, {s['seconds']:.0f} s ({rates})")
        else:
            out.print(f"  {split}: {s.get('count')} {s.get('unit', 'images')}, shape {s.get('shape')}")
    classes = info.get("classes") or []
    if classes:
        out.print(f"  classes ({len(classes)}): {', '.join(map(str, classes))}")
    if info.get("speakers"):
        out.print(f"  speakers ({len(info['speakers'])}): {', '.join(info['speakers'])}")
    if info.get("license"):
        out.print(f"  licence: {info['license']}", highlight=False, soft_wrap=True)
    files = info.get("files") or []
    if files:
        table = Table("file", "present", "checksum", box=None)
        for f in files:
            table.add_row(str(f.get("file")), "yes" if f.get("present") else "no", str(f.get("checksum")))
        out.print(table)
    if info.get("report"):
        out.print(f"  cleaning: {info['report']}")
