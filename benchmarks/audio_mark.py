"""Issue 24's audio-mark aims: does the keyed audio mark survive 16-bit requantisation, 8->16->8 kHz resampling and
white noise at 30 dB SNR (>= 95% detected each), stay off real speech (<= 1% false positives on FSDD's 3,000 clips)
and stay quiet (signal-to-mark ratio >= 30 dB)?

    python benchmarks/audio_mark.py --data-dir ../shared/data

Marked clips: the 300 FSDD test recordings (takes 0-4), silence trimmed with genforge's own trim_silence
(0.14-1.15 s, median 0.4 s at 8 kHz), standing in for generated clips (real speech is the harder host: generated
clips are no louder and no longer). Each is marked and written by `media.encode_audio` as 16-bit WAV, decoded, then
attacked:
- as written: the writer's own 16-bit rounding;
- requantised: -3 dB gain and 16 bits again (a re-save with a level change);
- resampled: 8 -> 16 -> 8 kHz through soxr (its default quality), 16 bits;
- noise: white Gaussian noise at 30 dB below the clip's mean power, 16 bits;
and, reported beside the aims: MP3 (the writer's constant bit rate, decoded by libsndfile; and the written WAV
re-encoded with libsndfile's default VBR), FLAC, quiet clips (marked at -20 dB), a crop of the first 37 + 3 x 128
samples and 100 samples of silence put in front (found by the detector's alignment search). Detection is
`AudioMark.detect` as `genforge verify` runs it (alignment search on, threshold p <= 3.2e-5); the "as found" column
gives the rate without the search (one test, the same threshold).

False positives: `detect` on all 3,000 FSDD recordings as they are (unmarked, untrimmed) and trimmed, under the
benchmark key, and on the 300 marked clips under another key; plus the share of unmarked clips whose as-found
p-value is below 0.01 (0.01 if the null distribution is right).

Writes benchmarks/audio_mark.json (or --json); the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from genforge.data.audio import trim_silence
from genforge.media.audio import decode_audio, encode_audio, quantize16
from genforge.media.audio_mark import AudioMark, signal_to_mark_db
from genforge.media.watermark import MarkKey

HERE = Path(__file__).resolve().parent
KEY = MarkKey(b"benchmark key: not a secret, 32+ bytes long")
WRONG = MarkKey(b"another key, also not a secret, 32 bytes")
RATE = 8000


def q16(x: np.ndarray) -> np.ndarray:
    return quantize16(x).astype(np.float32) / 32768


def load(recordings: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(all 3,000 clips as float32, the 300 test clips trimmed)."""
    files = sorted(recordings.glob("*.wav"))
    if len(files) != 3000:
        raise SystemExit(f"{recordings}: expected FSDD's 3,000 WAVs, found {len(files)}")
    clips, test = [], []
    for f in files:
        x, rate = sf.read(f, dtype="float32")
        if rate != RATE or x.ndim != 1:
            raise SystemExit(f"{f}: expected 8 kHz mono")
        clips.append(x)
        if int(f.stem.rsplit("_", 1)[1]) < 5:
            test.append(trim_silence(x))
    return clips, test


def _mp3_default(x: np.ndarray) -> np.ndarray:
    """Someone else's MP3 of the written clip: libsndfile's default settings (VBR, ~37 kbit/s at 8 kHz)."""
    buf = io.BytesIO()
    sf.write(buf, x, RATE, format="MP3", subtype="MPEG_LAYER_III")
    return sf.read(io.BytesIO(buf.getvalue()), dtype="float32")[0]


def attacks(written: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    power = float(np.mean(written.astype(np.float64) ** 2))
    return {
        "as written (16-bit WAV)": written,
        "requantised (-3 dB, 16-bit)": q16(written * 10 ** (-3 / 20)),
        "resampled 8->16->8 kHz": q16(soxr.resample(soxr.resample(written, RATE, 16000), 16000, RATE)),
        "white noise 30 dB SNR": q16(written + rng.normal(0, math.sqrt(power / 1000), len(written))),
        "cropped (first 421 samples cut)": written[37 + 3 * 128:],
        "padded (100 samples of silence in front)": np.concatenate([np.zeros(100, np.float32), written]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("GENFORGE_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--json", default=str(HERE / "audio_mark.json"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    clips, test = load(Path(a.data_dir) / "fsdd" / "recordings")
    mark, wrong = AudioMark(KEY), AudioMark(WRONG)
    rng = np.random.default_rng(a.seed)
    found: dict[str, list[bool]] = {}
    as_found: dict[str, list[bool]] = {}
    smr, smr16, wrong_hits, lengths = [], [], [], []
    for clip in test:
        lengths.append(len(clip) / RATE)
        marked = mark.embed(clip, RATE)
        smr.append(signal_to_mark_db(clip, marked))
        written = decode_audio(encode_audio(clip, RATE, "wav", mark=mark))[0]
        smr16.append(signal_to_mark_db(clip, written))
        views = attacks(written, rng)
        views["MP3 (the writer's, ~64 kbit/s CBR)"] = decode_audio(encode_audio(clip, RATE, "mp3", mark=mark))[0]
        views["MP3 re-encoded by libsndfile's defaults (VBR)"] = _mp3_default(written)
        views["FLAC"] = decode_audio(encode_audio(clip, RATE, "flac", mark=mark))[0]
        quiet = decode_audio(encode_audio(clip * 0.1, RATE, "wav", mark=mark))[0]
        views["quiet (-20 dB), as written"] = quiet
        power = float(np.mean(quiet.astype(np.float64) ** 2))
        views["quiet (-20 dB), noise 30 dB SNR"] = q16(quiet + rng.normal(0, math.sqrt(power / 1000), len(quiet)))
        for name, y in views.items():
            found.setdefault(name, []).append(mark.detect(y, RATE)["detected"])
            as_found.setdefault(name, []).append(mark.detect(y, RATE, search=False)["detected"])
        wrong_hits.append(wrong.detect(written, RATE)["detected"])
    fp_raw = [mark.detect(c, RATE)["detected"] for c in clips]
    fp_raw_found = [mark.scores(c, RATE)["p_value"] for c in clips]
    fp_trim = [mark.detect(trim_silence(c), RATE)["detected"] for c in clips]
    rows = {name: {"detected": round(float(np.mean(v)), 4),
                   "detected_as_found": round(float(np.mean(as_found[name])), 4)} for name, v in found.items()}
    aims = ["as written (16-bit WAV)", "requantised (-3 dB, 16-bit)", "resampled 8->16->8 kHz", "white noise 30 dB SNR"]
    result = {
        "clips": {"marked": len(test),
                  "seconds": {"min": round(min(lengths), 3), "median": round(float(np.median(lengths)), 3),
                              "max": round(max(lengths), 3)},
                  "source": "FSDD test recordings (takes 0-4), trim_silence(top_db=40); real speech standing in for "
                            "generated clips"},
        "mark": {k: v for k, v in vars(mark).items() if k != "key"},
        "detection": rows,
        "signal_to_mark_db": {"min": round(min(smr), 2), "median": round(float(np.median(smr)), 2),
                              "min_after_16bit": round(min(smr16), 2)},
        "false_positives": {
            "fsdd_3000_as_recorded": round(float(np.mean(fp_raw)), 5),
            "fsdd_3000_trimmed": round(float(np.mean(fp_trim)), 5),
            "marked_300_wrong_key": round(float(np.mean(wrong_hits)), 5),
            "fsdd_3000_as_found_p_below_0.01": round(float(np.mean(np.asarray(fp_raw_found) < 0.01)), 4),
        },
        "aims_met": {
            "detected >= 95% (each of requantised, resampled, noise)":
                all(rows[n]["detected"] >= 0.95 for n in aims[1:]),
            "false positives <= 1% on 3,000 real clips":
                float(np.mean(fp_raw)) <= 0.01 and float(np.mean(fp_trim)) <= 0.01,
            "signal-to-mark >= 30 dB (every clip)": min(smr) >= 30,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"{'condition':48s} {'detected':>9s} {'as found':>9s}")
    for name, row in rows.items():
        flag = "  (aim >= 0.95)" if name in aims[1:] else ""
        print(f"{name:48s} {row['detected']:9.3f} {row['detected_as_found']:9.3f}{flag}")
    print(f"signal-to-mark ratio: min {result['signal_to_mark_db']['min']} dB, median "
          f"{result['signal_to_mark_db']['median']} dB (aim >= 30); after the writer's 16 bits min "
          f"{result['signal_to_mark_db']['min_after_16bit']} dB")
    fp = result["false_positives"]
    print(f"false positives: {fp['fsdd_3000_as_recorded']:.4f} of 3,000 FSDD clips as recorded, "
          f"{fp['fsdd_3000_trimmed']:.4f} trimmed (aim <= 0.01); {fp['marked_300_wrong_key']:.4f} of marked clips "
          f"under another key; as-found p < 0.01 on {fp['fsdd_3000_as_found_p_below_0.01']:.4f} of clips "
          "(0.01 expected)")
    print(json.dumps(result["aims_met"]))
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
