"""Getting standard dataset files onto disk: verified, atomic, and with a by-hand fallback.

A download goes to a hidden temp file beside its destination and is renamed into place only after
its checksum matches, so an interrupted or corrupted transfer never leaves a file that looks real.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from genforge.errors import UserError

from .registry import (DATA_ENV, STANDARD_DATASETS, DatasetSpec, FileSpec, check_split, dataset_root,
                       mirrors_for, parse_name, resolve_data_dir)

log = logging.getLogger("genforge.data")

TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def expected_digest(spec: FileSpec) -> tuple[str, str] | None:
    if spec.sha256:
        return "sha256", spec.sha256.lower()
    if spec.md5:
        return "md5", spec.md5.lower()
    return None


def _hasher(algo: str):
    # md5 here is an integrity check against published values, not security: allow it under FIPS.
    return hashlib.new(algo, usedforsecurity=False)


def bytes_digest(data: bytes, algo: str) -> str:
    h = _hasher(algo)
    h.update(data)
    return h.hexdigest()


def file_digest(path: Path, algo: str) -> str:
    h = _hasher(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_status(path: Path | None, spec: FileSpec) -> str:
    """"ok" / "mismatch" / "missing", or "unknown" for a file with no published checksum
    (e.g. an uncompressed copy of a file that is published gzipped)."""
    if path is None:
        return "missing"
    expected = expected_digest(spec)
    if expected is None or path.name != spec.name:
        return "unknown"
    algo, value = expected
    return "ok" if file_digest(path, algo) == value else "mismatch"


class _NetworkError(Exception):
    """The remote side failed (no route, refused, timeout, HTTP error)."""


class _FetchFailed(Exception):
    def __init__(self, failures: list[str], mismatch: bool):
        super().__init__("; ".join(failures))
        self.failures = failures
        self.mismatch = mismatch


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _stream(url: str, out, hasher, dest: Path) -> None:
    try:
        response = urlopen(Request(url, headers={"User-Agent": "genforge"}), timeout=TIMEOUT_S)
    except (URLError, HTTPException, OSError, ValueError) as exc:
        raise _NetworkError(_reason(exc)) from None
    with response:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (URLError, HTTPException, OSError) as exc:
                raise _NetworkError(f"connection broke off: {_reason(exc)}") from None
            if not chunk:
                return
            hasher.update(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise UserError(f"Cannot write {dest} ({exc.strerror or exc}). Fix: free disk space in "
                                f"{dest.parent} or set ${DATA_ENV} to another folder.") from None


def fetch_file(urls: list[str], dest: Path, spec: FileSpec, unverified: bool = False) -> None:
    """Try each URL in turn until one yields a file with the expected checksum.

    Raises _FetchFailed (with every URL's reason) when none does; callers turn it into a UserError
    that says how to get the file by hand. `unverified` accepts a file with no published checksum: only
    for archives whose members are then checked one by one (extract_verified).
    """
    expected = expected_digest(spec)
    if expected is None and not unverified:
        raise ValueError(f"no checksum known for {spec.name}; refusing to download it unverified")
    algo, value = expected or ("sha256", None)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the data folder {dest.parent} ({exc.strerror or exc}). "
                        f"Fix: make it writable or set ${DATA_ENV} to a writable folder.") from None
    failures: list[str] = []
    mismatch = False
    for url in urls:
        log.info("downloading %s -> %s", url, dest)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise UserError(f"Cannot write into {dest.parent} ({exc.strerror or exc}). "
                            f"Fix: make it writable or set ${DATA_ENV} to a writable folder.") from None
        tmp = Path(tmp_name)
        try:
            hasher = _hasher(algo)
            with os.fdopen(fd, "wb") as out:
                _stream(url, out, hasher, dest)
            got = hasher.hexdigest()
            if value is not None and got != value:
                mismatch = True
                failures.append(f"{url}: {algo} is {got}, expected {value} (file damaged or not the "
                                "published one)")
                continue
            os.replace(tmp, dest)
            log.info("verified %s (%s ok)", dest.name, algo)
            return
        except _NetworkError as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise _FetchFailed(failures, mismatch)


def _names_text(names: list[str], limit: int = 6) -> str:
    """A list of file names for a message; long lists (thousands of recordings) are shortened."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{len(names):,} files: {', '.join(names[:limit - 1])}, ..., {names[-1]}"


def _by_hand(spec: DatasetSpec, root: Path, names: list[str], mirror: str | None) -> str:
    if mirror is None:  # no public download: the user brings the file
        listing = "\n".join(f"  {f.name} ({' '.join(expected_digest(f))})" for f in spec.all_files() if f.name in names)
        return (f"copy these files into {root}/ ('{spec.name}' has no public download; its images come from "
                f"{spec.homepage}), or set ${spec.mirror_env} to a URL or folder that holds them:\n{listing}")
    if spec.archive is not None:
        files_dir = spec.files_dir(root)
        return (f"download {mirror}{spec.archive.name} and put it in {root}/ (it is checked and extracted "
                f"on the next run), or put its extracted files ({_names_text(names)}) in {files_dir}/")
    urls = "\n".join(f"  {mirror}{n}" for n in names)
    return f"download these files and put them in {root}/:\n{urls}"


def _missing_error(spec: DatasetSpec, split: str, root: Path, missing: list[FileSpec]) -> UserError:
    names = [f.name for f in missing]
    mirror = spec.mirrors[0] if spec.mirrors else None
    allow = "allow downloading (download=True), or " if mirrors_for(spec) else ""
    return UserError(
        f"Dataset '{spec.name}' ({split} split) is not in {spec.files_dir(root)}: missing "
        f"{_names_text(names)}. Fix: {allow}"
        f"{_by_hand(spec, root, names, mirror)}\n"
        f"(The data folder is {root.parent}; set ${DATA_ENV} to use another one.)")


def _fetch_failed_error(spec: DatasetSpec, split: str, root: Path, missing: list[FileSpec],
                        failed: _FetchFailed) -> UserError:
    names = [f.name for f in missing]
    mirror = spec.mirrors[0] if spec.mirrors else None  # by hand, always from the official source
    tried = "\n".join(f"  {line}" for line in failed.failures)
    if failed.mismatch:
        problem = (f"Downloaded '{spec.name}' files did not match their published checksums, so they "
                   f"were deleted:\n{tried}\nFix: retry later (the mirror may be serving a damaged "
                   f"file; ${spec.mirror_env} overrides the mirror), or ")
    else:
        problem = (f"Could not download dataset '{spec.name}' ({split} split), no network or the mirror "
                   f"is unreachable:\n{tried}\nFix: check the connection (or ${spec.mirror_env}), or ")
    return UserError(problem + _by_hand(spec, root, names, mirror))


def _verify_or_fail(path: Path, spec: FileSpec) -> None:
    algo, value = expected_digest(spec)  # archives always carry a checksum
    if file_digest(path, algo) != value:
        raise UserError(f"{path} does not match its published {algo} checksum ({value}). "
                        f"Fix: delete it and download it again.")


def extract_archive(archive: Path, root: Path, top: str) -> None:
    """Extract a tar archive whose members all live under `top/` into `root/top/`.

    Members are checked before anything is written: no absolute paths, no '..', no links or
    devices, nothing outside `top/`. Files are written by us (not tar.extractall), to a temp folder
    first, and moved into place only when the whole archive read cleanly.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            plan: list[tuple[tarfile.TarInfo, list[str]]] = []
            for member in tar.getmembers():
                name = member.name
                parts = posixpath.normpath(name).split("/")
                if (name.startswith("/") or "\\" in name or ".." in parts or parts[0] != top
                        or (member.isfile() and len(parts) < 2)):
                    raise UserError(f"{archive} holds an unexpected path '{name}' (everything must be "
                                    f"inside {top}/). Fix: delete it and download it again from the "
                                    "official source.")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise UserError(f"{archive} holds a link or special file '{name}', which a dataset "
                                    "archive never has. Fix: delete it and download it again from the "
                                    "official source.")
                plan.append((member, parts[1:]))
            if not plan:
                raise UserError(f"{archive} contains no files under {top}/. "
                                "Fix: delete it and download it again.")
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
            try:
                for member, rel in plan:
                    target = staging.joinpath(*rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                final = root / top
                for _, rel in plan:
                    destination = final.joinpath(*rel)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging.joinpath(*rel), destination)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{archive} could not be extracted ({exc}). "
                        "Fix: delete it and download it again (and check free disk space).") from None
    log.info("extracted %s into %s", archive.name, root / top)


def extract_verified(archive: Path, files_dir: Path, wanted: list[FileSpec]) -> tuple[int, list[str]]:
    """Take the `wanted` files out of an archive that has no published checksum of its own.

    A member is taken when it is a regular file named like a wanted file inside a folder named like
    `files_dir` (e.g. <top>/recordings/0_george_0.wav) and its bytes match that file's sha256; nothing else in
    the archive is read or written. Returns (files installed, one line per member that did not match)."""
    by_name = {f.name: f for f in wanted if f.sha256}
    installed, mismatched = 0, []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = posixpath.normpath(member.name).split("/")
                if not member.isfile() or len(parts) < 2 or parts[-2] != files_dir.name or parts[-1] not in by_name:
                    continue
                spec = by_name.pop(parts[-1])
                source = tar.extractfile(member)
                data = source.read() if source is not None else b""
                if bytes_digest(data, "sha256") != spec.sha256.lower():
                    mismatched.append(f"{member.name}: sha256 differs from the published {spec.sha256}")
                    continue
                files_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=files_dir, prefix=f".{spec.name}.", suffix=".part")
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, files_dir / spec.name)
                installed += 1
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{archive} could not be extracted ({exc}). "
                        "Fix: delete it and download it again (and check free disk space).") from None
    log.info("took %d verified file(s) from %s into %s", installed, archive.name, files_dir)
    return installed, mismatched


def _extract_archive_files(spec: DatasetSpec, archive: Path, root: Path) -> None:
    """Extract the dataset's archive: whole when it carries a checksum, else member by member, verified."""
    if expected_digest(spec.archive) is not None:
        extract_archive(archive, root, spec.subfolder)
        return
    files_dir = spec.files_dir(root)
    absent = [f for f in spec.all_files() if f.find(files_dir) is None]
    _, mismatched = extract_verified(archive, files_dir, absent)
    if mismatched:
        lines = "\n".join(f"  {m}" for m in mismatched[:5]) + (f"\n  ... {len(mismatched) - 5} more"
                                                              if len(mismatched) > 5 else "")
        raise UserError(f"{len(mismatched)} file(s) in {archive.name} do not match the checksums genforge ships "
                        f"for '{spec.name}', so they were not installed:\n{lines}\nFix: delete {archive} and "
                        f"download it again from {spec.homepage}.")


def ensure_split_files(spec: DatasetSpec, data_dir: Path, split: str, download: bool) -> Path:
    """Make sure every file of `split` is on disk (extracting or downloading as needed);
    return the folder that holds them."""
    root = dataset_root(spec, data_dir)
    files_dir = spec.files_dir(root)

    def missing_files() -> list[FileSpec]:
        return [f for f in spec.splits[split] if f.find(files_dir) is None]

    missing = missing_files()
    if not missing:
        return files_dir
    if spec.archive is not None and (root / spec.archive.name).is_file():
        archive = root / spec.archive.name
        if expected_digest(spec.archive) is not None:
            _verify_or_fail(archive, spec.archive)
        _extract_archive_files(spec, archive, root)
        missing = missing_files()
        if missing:
            raise UserError(f"{archive} does not contain {_names_text([f.name for f in missing])}. "
                            "Fix: delete it and download it again.")
        return files_dir
    mirrors = mirrors_for(spec)
    if not download or not mirrors:
        raise _missing_error(spec, split, root, missing)
    created = [d for d in (files_dir, root, data_dir) if not d.exists()]  # deepest first
    try:
        if spec.archive is not None:
            archive = root / spec.archive.name
            fetch_file([m + spec.archive.name for m in mirrors], archive, spec.archive, unverified=True)
            try:
                _extract_archive_files(spec, archive, root)
            finally:
                archive.unlink(missing_ok=True)  # we fetched it; the extracted files are the dataset
        else:
            for f in missing:
                fetch_file([m + f.name for m in mirrors], files_dir / f.name, f)
    except _FetchFailed as failed:
        for d in created:  # leave no empty folders that look like a half-installed dataset
            with contextlib.suppress(OSError):
                d.rmdir()
        raise _fetch_failed_error(spec, split, root, missing, failed) from None
    missing = missing_files()
    if missing:
        raise UserError(f"The download of '{spec.name}' finished but {_names_text([f.name for f in missing])} "
                        f"is still missing from {files_dir}. Fix: delete {root} and try again.")
    return files_dir


def download_dataset(name: str, data_dir: str | Path | None = None,
                     splits: tuple[str, ...] = ("train", "test")) -> Path:
    """Fetch (and verify) the files of a standard dataset ahead of time, e.g. before going offline.

    Returns the folder holding the files. Files already present are left alone.
    """
    kind, key = parse_name(name)
    if kind != "standard":
        raise UserError(f"'{name}' is not downloadable: mnist-mini ships inside genforge and folder "
                        f"datasets are read in place. Fix: download one of {', '.join(STANDARD_DATASETS)}.")
    spec = STANDARD_DATASETS[key]
    directory = resolve_data_dir(data_dir)
    files_dir = spec.files_dir(dataset_root(spec, directory))
    for split in splits:
        files_dir = ensure_split_files(spec, directory, check_split(split), download=True)
    return files_dir
