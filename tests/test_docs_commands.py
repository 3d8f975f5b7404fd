"""The guides' commands cannot drift: every fenced ```bash block marked `<!-- runnable -->` (the line right above
the fence) runs, page by page, in a fresh folder, in the order the page shows them, against the current code.

Blocks of one page share one bash process (`set -euo pipefail`), so a page reads as one session: train, then
sample what was trained. The guides keep these blocks tiny (a few steps: `--max-steps`); the full presets' figures
are in benchmarks/RESULTS.md. Data comes from $GENFORGE_DATA, set to $GENFORGE_SHARED_DATA or ../shared/data beside the checkout (as CI
has it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARK = "<!-- runnable -->"
FENCE = re.compile(r"^(`{3,})bash\s*$")


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the ```bash blocks that follow a `<!-- runnable -->` line, in page order."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            j = i + 1
            m = FENCE.match(lines[j]) if j < len(lines) else None
            if m is None:
                raise ValueError(f"line {i + 1}: {MARK} must sit right above a ```bash fence")
            end = next(k for k in range(j + 1, len(lines)) if lines[k].strip() == m.group(1))
            blocks.append("\n".join(lines[j + 1:end]))
            i = end
        i += 1
    return blocks


def pages() -> list[Path]:
    return sorted(p for p in [ROOT / "README.md", *DOCS.rglob("*.md")] if MARK in p.read_text())


def test_runner_finds_marked_blocks():
    text = f"intro\n{MARK}\n```bash\necho one\n```\n```bash\necho not marked\n```\n{MARK}\n````bash\necho two\n````\n"
    assert runnable_blocks(text) == ["echo one", "echo two"]
    with pytest.raises(ValueError):
        runnable_blocks(f"{MARK}\n\n```bash\necho x\n```\n")


def test_the_guides_have_runnable_blocks():
    assert len(pages()) >= 10, "most guides should show commands that this test runs"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_commands_run(page, tmp_path):
    blocks = runnable_blocks(page.read_text())
    shared = os.environ.get("GENFORGE_SHARED_DATA") or str(ROOT.parent / "shared" / "data")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GENFORGE_EVALUATORS": str(tmp_path / "evaluators"), "OMP_NUM_THREADS": "1", "COLUMNS": "120",
           "GENFORGE_DATA": shared, "REPO": str(ROOT)}
    script = "set -euo pipefail\n" + "\n".join(blocks) + "\n"
    work = tmp_path / "work"
    work.mkdir()
    p = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{page.name}: a command failed (exit {p.returncode})\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
