"""Text and source-code corpora: find files, clean them, join them into one string for a language model.

Names accepted by `load_text_corpus`:
  shakespeare        tiny Shakespeare shipped inside the package (works offline, no data dir)
  tinyshakespeare    `<data dir>/tinyshakespeare/input.txt`; the packaged copy (same bytes) if absent
  python-stdlib      the `.py` files of the running Python's standard library, without the `test`/`tests`
                     folders, `idle_test`, `site-packages` and `dist-packages` (the tests are a third of
                     the code and mostly boilerplate)
  text:PATH          one text file, a folder (all files, recursively) or a glob such as `notes/**/*.md`
  code:PATH          a folder of source files (by extension, see CODE_EXTENSIONS), or one source file

Cleaning, counted in `TextCorpus.report`: files that are not UTF-8 (`skipped_undecodable`), contain NUL
bytes (`skipped_binary`), are empty (`skipped_empty`), cannot be read (`skipped_unreadable`) or repeat an earlier file byte for byte
(`duplicates`, by sha256) are dropped. When files are collected from a folder, glob or the stdlib,
files over `max_file_bytes` are skipped (`skipped_too_large`), since those are usually generated or
data files; a single file named explicitly is always read. A UTF-8 byte-order mark is removed and
Windows line ends become "\\n". Folders are walked in sorted order without hidden files or folders,
`__pycache__` and `node_modules`, so the corpus is the same on every run.

`TextCorpus.python` is True when every kept document comes from a `.py`/`.pyi` file (always for
python-stdlib; for text:/code: sources that hold nothing else, e.g. `code:'src/**/*.py'`): a model
trained on it writes Python, so `genforge eval` also checks that its samples parse.

Documents are joined with SEPARATOR, a blank line ("\\n\\n"): it needs no extra token in any vocabulary
and is what a model already reads as "something new starts here".
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from genforge.errors import UserError

from .registry import resolve_data_dir

SEPARATOR = "\n\n"
BUILTIN_CORPORA = ("shakespeare", "tinyshakespeare", "python-stdlib")
PREFIXES = ("text:", "code:")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

CODE_EXTENSIONS = frozenset(
    ".py .pyi .pyx .c .h .cc .cpp .cxx .hh .hpp .hxx .cu .cuh .m .mm .java .kt .kts .scala .groovy "
    ".go .rs .swift .cs .fs .js .jsx .mjs .cjs .ts .tsx .vue .svelte .rb .php .pl .pm .lua .r .jl "
    ".hs .ml .mli .ex .exs .erl .clj .dart .zig .nim .sh .bash .zsh .fish .ps1 .sql .html .css .scss "
    ".toml .cmake .proto .tex".split()
)
CODE_FILENAMES = frozenset({"Makefile", "Dockerfile", "CMakeLists.txt", "BUILD", "Rakefile", "Gemfile"})
PYTHON_EXTENSIONS = frozenset({".py", ".pyi"})
SKIP_DIRS = frozenset({"__pycache__", "node_modules"})
STDLIB_SKIP_DIRS = SKIP_DIRS | {"test", "tests", "idle_test", "site-packages", "dist-packages"}


@dataclass
class TextCorpus:
    name: str
    text: str  # every kept document, joined with SEPARATOR
    report: dict = field(default_factory=dict)
    python: bool = False  # every document is a Python source file


def _new_report(source: str) -> dict:
    return {"source": source, "files_found": 0, "files_loaded": 0, "skipped_binary": 0,
            "skipped_undecodable": 0, "skipped_too_large": 0, "skipped_empty": 0, "skipped_unreadable": 0,
            "duplicates": 0,
            "truncated": False, "bytes": 0, "chars": 0, "separator": SEPARATOR}


def _clean(data: bytes, report: dict, seen: set[str]) -> str | None:
    """The document's text, or None with the reason counted in the report."""
    if not data:
        report["skipped_empty"] += 1
        return None
    if b"\x00" in data:
        report["skipped_binary"] += 1
        return None
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        report["duplicates"] += 1
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        report["skipped_undecodable"] += 1
        return None
    seen.add(digest)
    report["files_loaded"] += 1
    report["bytes"] += len(data)
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _walk(root: Path, skip_dirs: frozenset[str]) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in skip_dirs)
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return files


def _is_code(path: Path) -> bool:
    return path.suffix.lower() in CODE_EXTENSIONS or path.name in CODE_FILENAMES


def _read_files(paths: list[Path], report: dict, max_file_bytes: int | None,
                max_files: int | None) -> tuple[list[str], list[Path]]:
    """The kept documents and the files they came from."""
    docs: list[str] = []
    kept: list[Path] = []
    seen: set[str] = set()
    for path in paths:
        if max_files is not None and len(docs) >= max_files:
            report["truncated"] = True
            break
        report["files_found"] += 1
        try:
            if max_file_bytes is not None and path.stat().st_size > max_file_bytes:
                report["skipped_too_large"] += 1
                continue
            data = path.read_bytes()
        except OSError:
            report["skipped_unreadable"] += 1  # permissions, a broken link
            continue
        text = _clean(data, report, seen)
        if text is not None:
            docs.append(text)
            kept.append(path)
    return docs, kept


def _collect(spec: str, code: bool) -> tuple[list[Path], bool]:
    """Files named by a path, folder or glob; the flag says whether they came from a listing
    (and so fall under the size cap) rather than being one file named explicitly."""
    pattern = os.path.expanduser(spec)
    if any(ch in pattern for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        files: list[Path] = []
        for p in matches:
            files += _walk(p, SKIP_DIRS) if p.is_dir() else [p] if p.is_file() else []
        return ([f for f in files if _is_code(f)] if code else files), True
    path = Path(pattern)
    if path.is_file():
        return [path], False
    if path.is_dir():
        files = _walk(path, SKIP_DIRS)
        return ([f for f in files if _is_code(f)] if code else files), True
    kind = "code" if code else "text"
    raise UserError(f"{kind}:{spec} does not exist. Fix: pass an existing file, folder or glob, "
                    f"e.g. {kind}:path/to/folder or '{kind}:src/**/*.py'.")


def _embedded_shakespeare() -> bytes:
    return resources.files(__package__).joinpath("embedded", "shakespeare", "input.txt").read_bytes()


def load_text_corpus(name: str, data_dir: str | Path | None = None, max_file_bytes: int = 1_000_000,
                     max_files: int | None = None) -> TextCorpus:
    """Load and clean a corpus by name (see the module docstring). `max_files` stops after that many
    files have been kept (handy for quick runs on python-stdlib); the report marks it `truncated`."""
    name = name.strip()
    if name == "shakespeare":
        return _single("shakespeare", "package: genforge/data/embedded/shakespeare/input.txt", _embedded_shakespeare())
    if name == "tinyshakespeare":
        path = resolve_data_dir(data_dir) / "tinyshakespeare" / "input.txt"
        if path.is_file():
            return _single(name, str(path), path.read_bytes())
        return _single(name, f"package copy (no {path})", _embedded_shakespeare())
    if name == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        paths = [p for p in _walk(root, STDLIB_SKIP_DIRS) if p.suffix == ".py"]
        return _finish(name, str(root), paths, True, max_file_bytes, max_files)
    for prefix in PREFIXES:
        if name.startswith(prefix):
            spec = name[len(prefix):].strip()
            if not spec:
                raise UserError(f"'{name}' names no path. Fix: write {prefix}PATH, e.g. {prefix}./my_folder.")
            paths, listed = _collect(spec, code=prefix == "code:")
            return _finish(name, spec, paths, listed, max_file_bytes, max_files)
    known = [*BUILTIN_CORPORA, "text:PATH", "code:PATH"]
    close = difflib.get_close_matches(name, BUILTIN_CORPORA, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"Unknown text corpus {name!r}.{hint} Fix: use one of {', '.join(known)}.")


def _single(name: str, source: str, data: bytes) -> TextCorpus:
    report = _new_report(source)
    report["files_found"] = 1
    text = _clean(data, report, set())
    if text is None:
        raise UserError(f"{source} holds no usable UTF-8 text ({_reasons(report)}). Fix: point to a UTF-8 text file.")
    report["chars"] = len(text)
    return TextCorpus(name, text, report)


def _finish(name: str, source: str, paths: list[Path], listed: bool, max_file_bytes: int,
            max_files: int | None) -> TextCorpus:
    report = _new_report(source)
    docs, kept = _read_files(paths, report, max_file_bytes if listed else None, max_files)
    if not docs:
        raise UserError(f"No usable text in {source}: {report['files_found']} file(s) found ({_reasons(report)}). "
                        "Fix: point to UTF-8 text files (code:PATH keeps only source-file extensions), or raise "
                        "max_file_bytes if the files were too large.")
    text = SEPARATOR.join(docs)
    report["chars"] = len(text)
    return TextCorpus(name, text, report, python=all(p.suffix.lower() in PYTHON_EXTENSIONS for p in kept))


def _reasons(report: dict) -> str:
    keys = ("skipped_binary", "skipped_undecodable", "skipped_too_large", "skipped_empty", "skipped_unreadable",
            "duplicates")
    parts = [f"{k.removeprefix('skipped_')}: {report[k]}" for k in keys if report[k]]
    return ", ".join(parts) or "none were text files"


def split_train_val(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on the first part, validate on the last `val_fraction`: a fixed, contiguous split, so
    validation text is never seen in training and the split is identical across runs."""
    if ids.dim() != 1:
        raise UserError(f"split_train_val expects a 1-D tensor of token ids; got shape {tuple(ids.shape)}.")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1); got {val_fraction}. Fix: use e.g. 0.1.")
    n_val = max(1, int(len(ids) * val_fraction)) if val_fraction > 0 else 0
    n_train = len(ids) - n_val
    if n_train < 2:
        raise UserError(f"The corpus has only {len(ids)} tokens, too few to split. Fix: use a larger corpus.")
    return ids[:n_train], ids[n_train:]
