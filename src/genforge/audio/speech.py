"""Reading a digit string aloud: the text is parsed into digits and pauses, the digits are generated as one
batch by any audio model, and the clips are trimmed and joined here. Numpy only, so `genforge.load` and the
torch-free runtime speak alike.

Accepted text: digits ("415 555 0199", "+1 (415) 555-0199") and number words ("four one five", "oh"); spaces,
punctuation and other separators between groups become a longer pause than the one between digits, as people
read phone numbers. Anything else (letters that spell no digit) is an error naming what is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

WORDS = {"zero": 0, "oh": 0, "o": 0, "nought": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
         "seven": 7, "eight": 8, "nine": 9}
MAX_DIGITS = 64  # what one request may read aloud (a server answers more with 4xx)
DIGIT_PAUSE_S = 0.08  # between two digits of a group
GROUP_PAUSE_S = 0.30  # at a space, dash, comma ... between groups
EDGE_S = 0.05  # silence before the first and after the last digit


class SpeechTextError(ValueError):
    """The text holds something that is not a digit, a number word or a separator."""


@dataclass(frozen=True)
class Utterance:
    """A parsed text: the digits in order, and after which digits a group ends (a longer pause)."""

    digits: list[int]
    group_ends: frozenset[int]  # indices i: a group pause follows digit i


def parse(text: str, max_digits: int = MAX_DIGITS) -> Utterance:
    """Digits and group boundaries of `text`; raises SpeechTextError for anything else.

    A group ends at punctuation after a digit, at a space after a numeral ("415 555"), and at two or more
    spaces after a number word (single spaces only separate words: "four one five" is one group)."""
    digits: list[int] = []
    ends: set[int] = set()
    previous = ""
    for token in re.findall(r"[0-9]|[A-Za-z]+|\s+|[^\sA-Za-z0-9]", text):
        if token.isdigit():
            digits.append(int(token))
        elif token.isalpha():
            word = token.lower()
            if word not in WORDS:
                raise SpeechTextError(
                    f"'{token}' is not a digit or a number word; a model of spoken digits reads digits (0-9) and "
                    f"the words {', '.join(sorted(WORDS))}, with spaces or punctuation between groups.")
            digits.append(WORDS[word])
        elif digits and (not token.isspace() or previous.isdigit() or len(token) > 1):
            ends.add(len(digits) - 1)
        previous = token
    if not digits:
        raise SpeechTextError("The text holds no digits: give digits (0-9) or number words, e.g. '415 555 0199'.")
    if len(digits) > max_digits:
        raise SpeechTextError(f"The text holds {len(digits)} digits; at most {max_digits} are read in one request. "
                              "Split it into shorter texts.")
    return Utterance(digits, frozenset(i for i in ends if i < len(digits) - 1))


def trim(clip: np.ndarray, sample_rate: int, top_db: float = 35.0, frame_s: float = 0.016) -> np.ndarray:
    """The clip without its leading and trailing silence: frames quieter than the loudest by `top_db` (RMS)."""
    frame = max(1, int(frame_s * sample_rate))
    n = len(clip) // frame
    if n == 0:
        return clip
    rms = np.sqrt(np.mean(clip[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -top_db)[0]
    if len(loud) == 0 or rms.max() < 1e-5:
        return clip[:0]
    return clip[loud[0] * frame : (loud[-1] + 1) * frame]


def fade(clip: np.ndarray, sample_rate: int, seconds: float = 0.005) -> np.ndarray:
    """Short linear fades at both ends, so a trimmed clip starts and stops without a click."""
    k = min(len(clip) // 2, int(seconds * sample_rate))
    if k == 0:
        return clip
    out = clip.astype(np.float32).copy()
    ramp = np.linspace(0, 1, k, dtype=np.float32)
    out[:k] *= ramp
    out[-k:] *= ramp[::-1]
    return out


def stretch(clip: np.ndarray, speed: float, window: int = 256, tolerance: int = 64) -> np.ndarray:
    """The clip played `speed` times faster with its pitch kept (speech rate, not a tape sped up): WSOLA
    (Verhelst & Roelands 1993): Hann windows laid at half-window steps on the output, each read from near its
    nominal input position, shifted by up to `tolerance` samples to where it best continues the previous one."""
    x = np.asarray(clip, np.float32)
    if abs(speed - 1.0) < 1e-6 or len(x) < 2 * window:
        return x.copy()
    hop = window // 2
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)).astype(np.float32)  # periodic: halves sum to 1
    n_out = int(len(x) / speed)
    frames = max(1, (n_out - window) // hop + 1)
    padded = np.pad(x, (tolerance, window + tolerance + hop))
    out = np.zeros(hop * (frames - 1) + window, np.float32)
    previous = 0
    for i in range(frames):
        nominal = int(round(i * hop * speed))
        if i == 0:
            start = nominal
        else:
            target = padded[tolerance + previous + hop : tolerance + previous + hop + window]
            lo = max(0, nominal - tolerance)
            region = padded[tolerance + lo : tolerance + nominal + tolerance + window]
            if len(region) < window or not target.any():
                start = nominal
            else:
                scores = np.correlate(region, target, mode="valid")
                start = lo + int(np.argmax(scores))
        start = min(start, len(x))
        out[i * hop : i * hop + window] += padded[tolerance + start : tolerance + start + window] * win
        previous = start
    return out


def join(clips: list[np.ndarray], utterance: Utterance, sample_rate: int, speed: float = 1.0) -> np.ndarray:
    """One waveform: each digit's clip trimmed, faded and (at `speed` != 1) stretched, with a short pause between
    digits and a longer one between groups; pauses scale with 1 / speed."""
    if not 0.25 <= speed <= 4.0:
        raise SpeechTextError(f"speed={speed} is out of range: use 0.25..4.0.")
    pieces = [np.zeros(int(EDGE_S * sample_rate), np.float32)]
    for i, clip in enumerate(clips):
        pieces.append(fade(stretch(trim(np.asarray(clip, np.float32), sample_rate), speed), sample_rate))
        if i < len(clips) - 1:
            pause = GROUP_PAUSE_S if i in utterance.group_ends else DIGIT_PAUSE_S
            pieces.append(np.zeros(int(pause / speed * sample_rate), np.float32))
    pieces.append(np.zeros(int(EDGE_S * sample_rate), np.float32))
    return np.concatenate(pieces)
