"""`speak`'s text side: parsing digit strings, trimming, stretching and joining clips (genforge.audio.speech)."""

import numpy as np
import pytest

from genforge.audio import speech

RATE = 8000


@pytest.mark.parametrize("text, digits, ends", [
    ("415 555 0199", [4, 1, 5, 5, 5, 5, 0, 1, 9, 9], [2, 5]),
    ("+1 (415) 555-0199", [1, 4, 1, 5, 5, 5, 5, 0, 1, 9, 9], [0, 3, 6]),
    ("four one five", [4, 1, 5], []),
    ("Four one five,  six", [4, 1, 5, 6], [2]),
    ("oh seven", [0, 7], []),
    ("12", [1, 2], []),
])
def test_parse_digits_words_and_groups(text, digits, ends):
    u = speech.parse(text)
    assert u.digits == digits
    assert sorted(u.group_ends) == ends


@pytest.mark.parametrize("text, fragment", [
    ("call me", "'call' is not a digit"),
    ("", "no digits"),
    ("...", "no digits"),
    ("1" * 65, "at most 64"),
])
def test_parse_errors_name_the_problem(text, fragment):
    with pytest.raises(speech.SpeechTextError, match=fragment):
        speech.parse(text)


def _tone(seconds, rate=RATE, lead=0.2, tail=0.3):
    t = np.arange(int(seconds * rate)) / rate
    body = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.concatenate([np.zeros(int(lead * rate), np.float32), body, np.zeros(int(tail * rate), np.float32)])


def test_trim_removes_leading_and_trailing_silence_only():
    clip = _tone(0.4)
    trimmed = speech.trim(clip, RATE)
    assert abs(len(trimmed) / RATE - 0.4) < 0.02  # within one analysis frame (16 ms) or so
    assert np.abs(trimmed).max() > 0.4
    assert len(speech.trim(np.zeros(RATE, np.float32), RATE)) == 0


def test_stretch_changes_duration_not_pitch():
    clip = _tone(0.5, lead=0, tail=0)
    fast = speech.stretch(clip, 2.0)
    assert abs(len(fast) / len(clip) - 0.5) < 0.05
    spectrum = np.abs(np.fft.rfft(fast[256:-256]))
    peak_hz = np.argmax(spectrum) * RATE / (len(fast) - 512)
    assert abs(peak_hz - 440) < 15  # the pitch stays where it was (resampling would double it)


def test_join_lays_out_pauses_as_documented():
    clips = [_tone(0.3) for _ in range(4)]
    u = speech.parse("12 34")
    out = speech.join(clips, u, RATE)
    speech_s = 4 * 0.3
    pauses = 2 * speech.DIGIT_PAUSE_S + speech.GROUP_PAUSE_S + 2 * speech.EDGE_S
    assert abs(len(out) / RATE - (speech_s + pauses)) < 0.12
    faster = speech.join(clips, u, RATE, speed=2.0)
    assert len(faster) < 0.6 * len(out)
    with pytest.raises(speech.SpeechTextError, match="speed"):
        speech.join(clips, u, RATE, speed=10)
