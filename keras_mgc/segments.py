"""Genre segments: consecutive tagger windows merged into (start, end, genre) spans.

For DJ mixes and long recordings, ``python -m keras_mgc.tag --segments`` turns the
per-window probabilities into a short list of segments. The browser page (issue 15)
implements the same algorithm and must give the same segments, so this is its one
definition; it is written here in full (it is also in docs/tagger.md).

The algorithm
-------------
Input: per-window probabilities P (n_windows x K), window start times s_i (seconds,
from the tagger's windows), window length W and hop H (seconds), song duration D,
class names. Parameters: hysteresis h (default 0.1), min_segment m (seconds, default
10.0).

1. Raw segmentation. g = argmax P[0]; the first segment starts at 0.0. For
   i = 1..n-1: c = argmax P[i] (ties: lowest index). If c != g and
   P[i, c] - P[i, g] >= h, close the current segment at boundary
   t = s_i + (W - H) / 2 (the midpoint between the centres of windows i-1 and i),
   clamped to [0, D], and open a new one with genre c at t; g = c. Each segment
   remembers which windows it holds (window i belongs to the segment open when window
   i is processed). The last segment ends at D.
2. Minimum length. While there is more than one segment and some segment is shorter
   than m seconds: take the shortest one (ties: earliest); merge it into its neighbour
   (previous or next; only one exists at the ends) whose genre has the higher mean
   probability over the short segment's windows (ties: the previous one). The merged
   segment keeps the neighbour's genre and spans both. After each merge, join adjacent
   segments that have the same genre.
3. Output per segment: start, end (seconds, rounded to 3 decimals only when printed),
   genre (name), mean probability = mean over the segment's windows of P[:, genre].

Audacity label track: one line per segment, "start\\tend\\tgenre" with 6 decimals
(Audacity's format).

Arithmetic: everything is done in float64 (as JavaScript numbers are), and a mean is the
left-to-right sum divided by the count (as a plain loop computes it), so the comparisons
``>= h``, ``< m`` and the neighbour choice come out the same, bit for bit, in both
implementations. W, H and the starts are the tagger's sample counts divided by the
sample rate (``TagResult.window``, ``.hop``, ``.window_starts``). The hysteresis compares
the new top class with the current segment's genre in the same window, so a song that
drifts between two close genres does not flicker; the minimum length then absorbs
short excursions (a break, a transition) into the neighbour that explains them best.

This module needs only NumPy (the tagger must run without TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_HYSTERESIS = 0.1
DEFAULT_MIN_SEGMENT = 10.0


@dataclass(frozen=True)
class Segment:
    """One genre segment: [start, end) seconds, windows [first_window, stop_window)."""

    start: float
    end: float
    genre: str
    probability: float  # mean over the segment's windows of P[:, genre]
    first_window: int
    stop_window: int

    @property
    def duration(self) -> float:
        return self.end - self.start

    def as_dict(self, digits: int = 6) -> dict[str, Any]:
        """The JSON form: times rounded to 3 decimals, the probability to `digits`."""
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "genre": self.genre,
            "probability": round(self.probability, digits),
        }


def segment_windows(
    probabilities: np.ndarray,
    starts: Sequence[float] | np.ndarray,
    window: float,
    hop: float,
    duration: float,
    class_names: Sequence[str],
    hysteresis: float = DEFAULT_HYSTERESIS,
    min_segment: float = DEFAULT_MIN_SEGMENT,
) -> list[Segment]:
    """Genre segments from per-window probabilities (the algorithm in the module docstring).

    Three windows of 2 s every 1 s over a 4 s song; the top class changes at window 1:

    >>> P = [[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]
    >>> segs = segment_windows(P, [0.0, 1.0, 2.0], 2.0, 1.0, 4.0, ["jazz", "rock"], min_segment=0)
    >>> [(s.start, s.end, s.genre, round(s.probability, 3)) for s in segs]
    [(0.0, 1.5, 'jazz', 0.9), (1.5, 4.0, 'rock', 0.85)]

    With a hysteresis of 0.7, window 1's lead of 0.6 is not enough; window 2's 0.8 is:

    >>> [(s.start, s.genre) for s in segment_windows(P, [0.0, 1.0, 2.0], 2.0, 1.0, 4.0,
    ...                                               ["jazz", "rock"], hysteresis=0.7, min_segment=0)]
    [(0.0, 'jazz'), (2.5, 'rock')]

    With the default minimum of 10 s both are too short; the shorter (rock, 1.5 s) is merged
    into its only neighbour, which keeps its genre and now spans the song:

    >>> [(s.start, s.end, s.genre) for s in segment_windows(P, [0.0, 1.0, 2.0], 2.0, 1.0, 4.0,
    ...                                                      ["jazz", "rock"], hysteresis=0.7)]
    [(0.0, 4.0, 'jazz')]
    """
    P = _check(probabilities, starts, window, hop, duration, class_names, hysteresis, min_segment)
    s = np.asarray(starts, np.float64)
    n = len(P)
    offset = (float(window) - float(hop)) / 2.0
    top = np.argmax(P, axis=1)  # ties: the lowest index

    # 1. raw segmentation: per segment its start, end, genre and windows [first, stop)
    begin, end, genre, first, stop = [0.0], [], [int(top[0])], [0], []
    for i in range(1, n):
        c, g = int(top[i]), genre[-1]
        if c != g and P[i, c] - P[i, g] >= hysteresis:
            t = min(max(s[i] + offset, 0.0), float(duration))
            end.append(t)
            stop.append(i)
            begin.append(t)
            genre.append(c)
            first.append(i)
    end.append(float(duration))
    stop.append(n)

    # 2. minimum length. Neighbours always differ in genre (true of the raw segments, and
    # kept by joining after each merge), so a merge can only create one same-genre pair:
    # merged into the previous segment, it may now touch a next of the same genre. (Merged
    # into the next, its new previous neighbour cannot share that genre: equal genres give
    # equal means, and ties go to the previous.)
    columns = (begin, end, genre, first, stop)

    def absorb(lo: int, into: int) -> None:
        """Segments lo and lo + 1 become one (at lo) with the genre of `into`."""
        genre[lo] = genre[into]
        end[lo], stop[lo] = end[lo + 1], stop[lo + 1]
        for column in columns:
            del column[lo + 1]

    while len(genre) > 1:
        lengths = np.subtract(end, begin)
        k = int(np.argmin(lengths))  # ties: the earliest
        if not lengths[k] < min_segment:
            break
        if k == 0:
            into = 1
        elif k == len(genre) - 1:
            into = k - 1
        else:
            prev_mean = _mean(P, first[k], stop[k], genre[k - 1])
            next_mean = _mean(P, first[k], stop[k], genre[k + 1])
            into = k + 1 if next_mean > prev_mean else k - 1  # ties: the previous
        lo = min(k, into)
        absorb(lo, into)
        if lo + 1 < len(genre) and genre[lo + 1] == genre[lo]:
            absorb(lo, lo)

    # 3. output
    return [
        Segment(start=float(b), end=float(e), genre=class_names[g], probability=_mean(P, a, z, g),
                first_window=a, stop_window=z)
        for b, e, g, a, z in zip(begin, end, genre, first, stop)
    ]


def _mean(P: np.ndarray, first: int, stop: int, column: int) -> float:
    """Mean of P[first:stop, column] summed left to right (np.mean sums pairwise), so a plain
    JavaScript loop gives the same bits."""
    return float(np.cumsum(P[first:stop, column])[-1] / (stop - first))


def _check(
    probabilities: Any,
    starts: Any,
    window: float,
    hop: float,
    duration: float,
    class_names: Sequence[str],
    hysteresis: float,
    min_segment: float,
) -> np.ndarray:
    P = np.asarray(probabilities, np.float64)
    if P.ndim != 2 or P.shape[0] == 0 or P.shape[1] == 0:
        raise ValueError(f"probabilities must be a non-empty (windows, classes) matrix, got shape {P.shape}")
    if not np.isfinite(P).all():
        raise ValueError("probabilities have NaN or Inf values")
    if P.shape[1] != len(class_names):
        raise ValueError(f"probabilities have {P.shape[1]} classes but {len(class_names)} class names were given")
    s = np.asarray(starts, np.float64)
    if s.shape != (P.shape[0],):
        raise ValueError(f"{P.shape[0]} windows need {P.shape[0]} start times, got shape {s.shape}")
    if not np.isfinite(s).all() or (np.diff(s) <= 0).any():
        raise ValueError("window start times must be finite and strictly increasing")
    for name, value, low in (("window", window, 0.0), ("hop", hop, 0.0), ("duration", duration, 0.0)):
        if not (np.isfinite(value) and value > low):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if not (np.isfinite(hysteresis) and hysteresis >= 0):
        raise ValueError(f"hysteresis must be a probability difference >= 0, got {hysteresis!r}")
    if not (np.isfinite(min_segment) and min_segment >= 0):
        raise ValueError(f"min_segment must be >= 0 seconds, got {min_segment!r}")
    return P


def audacity_labels(segments: Sequence[Segment]) -> str:
    """An Audacity label track (File > Import > Labels): "start<TAB>end<TAB>genre" per line.

    >>> audacity_labels([Segment(0.0, 12.5, "jazz", 0.8, 0, 11), Segment(12.5, 30.0, "rock", 0.7, 11, 29)])
    '0.000000\\t12.500000\\tjazz\\n12.500000\\t30.000000\\trock\\n'
    """
    return "".join(f"{s.start:.6f}\t{s.end:.6f}\t{s.genre}\n" for s in segments)
