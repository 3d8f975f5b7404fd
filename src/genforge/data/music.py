"""Music corpora for the language models: folk tunes in ABC and Bach chorales as note events, split by tune.

Names accepted by `load_music_corpus`:
  folk-abc           every single-voice ABC tune in music21's corpus (Essen, O'Neill's 1850, Aird's Airs, Ryan's
                     Mammoth, a few more): about 12,900 tunes, cleaned and normalised (music/abc.py)
  folk-abc:A,B       only the named collections (e.g. folk-abc:oneills1850,ryansMammoth)
  bach-chorales      the four-part Bach chorales of music21's corpus as note-event text (music/events.py)
  folder:PATH        a user's own .abc files (ABC route), or .mid/.midi/.musicxml/.xml/.mxl/.abc as events
                     (data.tokenizer=event)

The split is by tune, never by character: a tune's hash (of its normalised text) decides its side, so a tune
that appears twice in the sources lands on one side, and the split is the same on every machine. Cleaning
(normal form, one X: per tune, tunes music21 cannot read dropped) is counted in the report. Checking that
13,000 tunes parse takes minutes, so the cleaned corpus is cached under the cache folder, keyed by the music21
version and CLEANING_VERSION.

Licences differ per collection and travel with every run's metadata (`LICENCES`): some encodings may be used
for non-commercial purposes only.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from genforge.errors import UserError

from .registry import FOLDER_PREFIX, cache_dir

CLEANING_VERSION = 1
MUSIC_DATASETS = ("folk-abc", "bach-chorales")
ABC_COLLECTIONS = ("essenFolksong", "oneills1850", "airdsAirs", "ryansMammoth", "miscFolk", "nottingham-dataset")
CORPUS_NOTE = "music21's corpus: see music21/corpus/license.txt; some encodings are for non-commercial use only"
LICENCES = {
    "essenFolksong": "Essen Folksong Collection (EsAC; ABC by Seymour Schlien): non-commercial distribution and use, "
                     "by permission of Ewa Dahlig-Turek (music21/corpus/essenFolksong/license.txt)",
    "oneills1850": "O'Neill's Music of Ireland, 1850 melodies (1903; public domain), ABC by Norbert Paap; " + CORPUS_NOTE,
    "airdsAirs": "Aird's Selection of Scotch, English, Irish and Foreign Airs (1778-1803; public domain), ABC by "
                 "Jack Campin; " + CORPUS_NOTE,
    "ryansMammoth": "Ryan's Mammoth Collection (1883; public domain), ABC contributed by John Chambers and others; "
                    + CORPUS_NOTE,
    "miscFolk": "folk tunes transcribed by Jack Campin and others; " + CORPUS_NOTE,
    "nottingham-dataset": "Nottingham Music Database (sample); " + CORPUS_NOTE,
    "bach": "J.S. Bach's chorales (public domain), MusicXML encodings from music21's corpus; " + CORPUS_NOTE,
    "folder": "the user's own files: their licence is the user's",
}
MUSIC_FILE_SUFFIXES = {".abc", ".mid", ".midi", ".musicxml", ".xml", ".mxl"}


@dataclass
class MusicCorpus:
    name: str
    kind: str  # "abc" (ABC text, char/BPE tokens) or "events" (note-event text, event tokens)
    train: list[str]
    test: list[str]
    report: dict = field(default_factory=dict)
    licences: dict[str, str] = field(default_factory=dict)

    def meta(self) -> dict:
        """What a run records about its music data (artifacts.modality_of reads `kind` from here)."""
        return {"kind": self.kind, "dataset": self.name, "train_pieces": len(self.train),
                "test_pieces": len(self.test), "report": self.report, "licences": self.licences}


def is_music_dataset(name: str, tokenizer: str | None = None) -> bool:
    """A music corpus name, or a folder read as music (a folder of .abc files, or anything with the event tokens)."""
    name = name.strip()
    if name in MUSIC_DATASETS or name.startswith("folk-abc:"):
        return True
    if name.startswith(FOLDER_PREFIX):
        if tokenizer == "event":
            return True
        root = Path(name[len(FOLDER_PREFIX):]).expanduser()
        return root.is_dir() and any(p.suffix.lower() in MUSIC_FILE_SUFFIXES for p in root.rglob("*"))
    return False


def held_out(piece: str, val_fraction: float) -> bool:
    """Whether a piece is on the test side: by a hash of its text, so duplicates share a side on every machine."""
    h = int.from_bytes(hashlib.sha256(piece.encode("utf-8")).digest()[:8], "big")
    return (h % 100_000) < round(val_fraction * 100_000)


def split_pieces(pieces: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    train, test = [], []
    for p in pieces:
        (test if held_out(p, val_fraction) else train).append(p)
    return train, test


def _music21_root() -> Path:
    try:
        import music21
    except ImportError:
        raise UserError("The music datasets are read from music21's corpus, which is not installed. "
                        "Fix: pip install 'genforge[music]'.") from None
    return Path(music21.__file__).parent / "corpus"


def _music21_version() -> str:
    import music21
    return music21.__version__


def _check_tune(tune: str) -> str | None:
    """None when music21 reads the tune as notes, else why not (run in worker processes)."""
    from genforge.music.abc import abc_score
    from genforge.music.notes import MusicError
    try:
        abc_score(tune)
    except MusicError as e:
        return str(e)
    return None


def clean_abc_texts(texts: list[tuple[str, str]], workers: int | None = None) -> tuple[list[tuple[str, str]], dict]:
    """Normalise every tune of [(source, file text)] and keep those music21 reads, once each:
    ([(source, tune)], report with what was dropped and why)."""
    from genforge.music.abc import normalise_tune, split_tunes

    report = {"files": len(texts), "tunes_found": 0, "kept": 0, "duplicates": 0, "dropped_no_key": 0,
              "dropped_multivoice": 0, "dropped_no_body": 0, "dropped_unparseable": 0}
    candidates: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source, text in texts:
        for raw in split_tunes(text):
            report["tunes_found"] += 1
            tune, why = normalise_tune(raw)
            if tune is None:
                report[f"dropped_{why}"] += 1
                continue
            if tune in seen:
                report["duplicates"] += 1
                continue
            seen.add(tune)
            candidates.append((source, tune))
    workers = workers or min(4, os.cpu_count() or 1)
    tunes = [t for _, t in candidates]
    if workers > 1 and len(tunes) > 200:
        with ProcessPoolExecutor(workers) as pool:
            problems = list(pool.map(_check_tune, tunes, chunksize=64))
    else:
        problems = [_check_tune(t) for t in tunes]
    kept = [c for c, bad in zip(candidates, problems) if bad is None]
    report["dropped_unparseable"] = len(candidates) - len(kept)
    report["kept"] = len(kept)
    return kept, report


def _corpus_abc_files(collections: tuple[str, ...]) -> list[tuple[str, str]]:
    root = _music21_root()
    out = []
    for name in collections:
        folder = root / name
        if not folder.is_dir():
            raise UserError(f"music21's corpus has no collection {name!r} (looked in {folder}). "
                            f"Fix: use some of {', '.join(ABC_COLLECTIONS)}.")
        for path in sorted(folder.rglob("*.abc")):
            out.append((name, path.read_bytes().decode("utf-8", errors="replace")))
    return out


def _cached(key: str, build):
    """A JSON-able value built once and kept under cache_dir()/music (written atomically)."""
    path = cache_dir() / "music" / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache folder: rebuild next time
    return value


def folk_abc(collections: tuple[str, ...] = ABC_COLLECTIONS) -> tuple[list[tuple[str, str]], dict]:
    """The cleaned tunes of the named collections, [(collection, tune)], and the cleaning report (cached)."""
    key = f"folk-abc-v{CLEANING_VERSION}-m21-{_music21_version()}-" + hashlib.sha1(
        ",".join(collections).encode()).hexdigest()[:8]

    def build():
        warnings.warn(f"genforge: checking that the tunes of {', '.join(collections)} parse with music21, once per "
                      "music21 version (minutes for all of folk-abc); the result is cached.", stacklevel=3)
        kept, report = clean_abc_texts(_corpus_abc_files(collections))
        return {"tunes": kept, "report": report}
    value = _cached(key, build)
    return [tuple(t) for t in value["tunes"]], value["report"]


def load_music_corpus(name: str, val_fraction: float = 0.1, tokenizer: str | None = None) -> MusicCorpus:
    """A music corpus by name (see the module docstring), split by tune into train and test."""
    name = name.strip()
    if name == "folk-abc" or name.startswith("folk-abc:"):
        chosen = ABC_COLLECTIONS if name == "folk-abc" else tuple(c.strip() for c in name.split(":", 1)[1].split(",")
                                                                  if c.strip())
        unknown = [c for c in chosen if c not in ABC_COLLECTIONS]
        if unknown or not chosen:
            raise UserError(f"Unknown folk-abc collection(s) {', '.join(unknown) or '(none named)'}. "
                            f"Fix: choose from {', '.join(ABC_COLLECTIONS)}, e.g. folk-abc:oneills1850,ryansMammoth.")
        tunes, report = folk_abc(chosen)
        train, test = split_pieces([t for _, t in tunes], val_fraction)
        per = {c: sum(1 for s, _ in tunes if s == c) for c in chosen}
        return MusicCorpus(name, "abc", train, test, {**report, "per_collection": per},
                           {c: LICENCES[c] for c in chosen})
    if name == "bach-chorales":
        from genforge.music.events import chorale_documents
        report: dict = {}
        docs = chorale_documents(report=report)
        train, test = split_pieces([d for _, d in docs], val_fraction)
        return MusicCorpus(name, "events", train, test, report, {"bach": LICENCES["bach"]})
    if name.startswith(FOLDER_PREFIX):
        return _folder(name, val_fraction, tokenizer)
    raise UserError(f"Unknown music dataset {name!r}. Fix: use one of folk-abc, folk-abc:COLLECTIONS, "
                    "bach-chorales, folder:PATH.")


def _folder(name: str, val_fraction: float, tokenizer: str | None) -> MusicCorpus:
    root = Path(name[len(FOLDER_PREFIX):]).expanduser()
    if not root.is_dir():
        raise UserError(f"{name}: no such folder. Fix: point folder: at a folder of .abc, .mid or .musicxml files.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MUSIC_FILE_SUFFIXES)
    if tokenizer != "event":
        abc = [p for p in files if p.suffix.lower() == ".abc"]
        if not abc:
            raise UserError(f"{name} holds no .abc files ({len(files)} other music files). Fix: for MIDI or MusicXML "
                            "files train on note events: data.tokenizer=event.")
        kept, report = clean_abc_texts([(str(p.relative_to(root)), p.read_bytes().decode("utf-8", errors="replace"))
                                        for p in abc])
        if not kept:
            raise UserError(f"No tune in {name} could be read ({report}). Fix: check the files are ABC tunes with "
                            "X: and K: lines.")
        train, test = split_pieces([t for _, t in kept], val_fraction)
        return MusicCorpus(name, "abc", train, test, report, {"folder": LICENCES["folder"]})
    report = {}
    docs = _event_documents(files, report)
    if not docs:
        raise UserError(f"No piece in {name} could be read as notes ({report}). Fix: use .mid, .musicxml or .abc "
                        "files.")
    train, test = split_pieces([d for _, d in docs], val_fraction)
    return MusicCorpus(name, "events", train, test, report, {"folder": LICENCES["folder"]})


def _event_documents(files: list[Path], report: dict) -> list[tuple[str, str]]:
    """(file, event text) for every file music21 reads as notes the event codec can write; the rest counted."""
    from genforge.music.events import score_to_events
    from genforge.music.notes import MusicError, score_from_stream

    from music21 import converter

    report.update({"files": len(files), "kept": 0, "dropped_unreadable": 0, "dropped_unrepresentable": 0})
    out = []
    for path in files:
        try:
            score = score_from_stream(converter.parse(str(path)))
        except Exception:  # music21 raises many kinds on a broken file
            report["dropped_unreadable"] += 1
            continue
        try:
            out.append((str(path), score_to_events(score, quantise=True)))  # users' MIDI: snapped to the grid
        except MusicError:
            report["dropped_unrepresentable"] += 1
            continue
        report["kept"] += 1
    return out


def music_dataset_info(name: str, val_fraction: float = 0.1) -> dict:
    """`genforge data info folk-abc`: pieces and characters per split, the cleaning report and the licences."""
    corpus = load_music_corpus(name, val_fraction)
    unit = "tunes" if corpus.kind == "abc" else "pieces"
    splits = {split: {"count": len(pieces), "unit": unit, "characters": sum(map(len, pieces))}
              for split, pieces in (("train", corpus.train), ("test", corpus.test))}
    return {"name": name, "path": f"music21's corpus ({_music21_root()})", "splits": splits,
            "report": corpus.report, "license": "; ".join(f"{k}: {v}" for k, v in corpus.licences.items()),
            "kind": corpus.kind, "split": f"by tune, {val_fraction:g} held out (a hash of each tune's text)"}
