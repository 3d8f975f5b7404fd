"""The kind of box a benchmark ran on, as a file-name slug: figures of two kinds never share a file."""

from __future__ import annotations

import re


def cpu_kind() -> str:
    """CPU model and its best low-precision feature, e.g. 'amd-epyc-avx512-bf16' or 'amd-epyc-avx2'."""
    from genforge import precision as prec

    flags = prec.cpu_flags()
    best = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "baseline")
    return re.sub(r"[^a-z0-9]+", "-", f"{prec.cpu_model()} {best}".lower()).strip("-")
