"""Rendering speed (issue 26's aim: 30 s of a tune to WAV in <= 1 s). Takes a real folk-abc test tune, repeats
its notes until the music lasts 30 s, and times, in fresh processes (so imports and the soundfont load count):
the synthesis alone (Score -> samples), Score -> WAV bytes, and the whole `genforge render tune.abc --out x.wav`
command (music21's parse included); then the same in-process after a warm-up.

    python benchmarks/music_render_speed.py

Run it on an idle box: two CPU jobs at once slow each other several-fold.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_kind  # noqa: E402

SECONDS = 30.0
REPEATS = 5

COLD = r"""
import sys, time
t0 = time.perf_counter()
from genforge.music.notes import Note, Score
from genforge.media.music import render_audio, score_to_midi
from genforge.media.audio import encode_audio
import json
notes, qpm = json.loads(sys.argv[1])
score = Score([Note(*n) for n in notes], "6/8", 2, None, qpm)
t1 = time.perf_counter()
clip = render_audio(score, 22050)
t2 = time.perf_counter()
data = encode_audio(clip, 22050, "wav")
t3 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "synthesis_with_soundfont_load": t2 - t1, "wav_encode": t3 - t2,
                  "audio_seconds": len(clip) / 22050}))
"""


def thirty_second_tune() -> tuple[str, list, float]:
    """A real held-out tune whose notes are repeated until the music lasts SECONDS at its tempo."""
    from genforge.data.music import load_music_corpus
    from genforge.music.abc import abc_score

    corpus = load_music_corpus("folk-abc")
    tune = next(t for t in corpus.test if "M:6/8" in t and len(t) > 300)
    score = abc_score(tune)
    notes, offset = [], 0.0
    while offset * 60.0 / score.qpm < SECONDS:
        notes += [(n.onset + offset, n.duration, n.pitch, n.voice) for n in score.notes]
        offset += score.end
    end = SECONDS * score.qpm / 60.0
    notes = [n for n in notes if n[0] < end]
    return tune, notes, score.qpm


def main() -> None:
    tune, notes, qpm = thirty_second_tune()
    out: dict = {"machine": cpu_kind(), "aim": "30 s of a tune to WAV in <= 1 s", "notes": len(notes), "qpm": qpm}
    cold = [json.loads(subprocess.run([sys.executable, "-c", COLD, json.dumps([notes, qpm])], capture_output=True,
                                      text=True, check=True).stdout.strip().splitlines()[-1]) for _ in range(REPEATS)]
    out["cold_process"] = {k: round(min(c[k] for c in cold), 3) for k in cold[0]}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tune.abc"
        path.write_text(tune + "\n", encoding="utf-8")
        times = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            subprocess.run(["genforge", "render", str(path), "--out", str(Path(d) / "x.wav")], check=True,
                           capture_output=True)
            times.append(time.perf_counter() - t)
        out["render_command_tune_seconds"] = round(min(times), 3)
        out["render_command_note"] = f"the tune as written ({len(tune)} characters): parse + render + WAV, one process"
    from genforge.media.audio import encode_audio
    from genforge.media.music import render_audio
    from genforge.music.notes import Note, Score

    score = Score([Note(*n) for n in notes], "6/8", 2, None, qpm)
    render_audio(score, 22050)  # warm: the soundfont is loaded once per process
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        clip = render_audio(score, 22050)
        encode_audio(clip, 22050, "wav")
        times.append(time.perf_counter() - t)
    out["warm_render_and_wav_seconds"] = round(min(times), 4)
    out["audio_seconds"] = round(len(clip) / 22050, 2)
    path = Path(__file__).with_name(f"music_render_speed-{cpu_kind()}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
