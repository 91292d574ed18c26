"""Crops and windows: every way this project cuts a clip into model inputs, defined once.

- `crop`: `size` samples (or mel frames) from `start`; a clip shorter than `size` is
  wrap-padded (repeated from its start), as in training. Used by the training pipeline
  (`keras_mgc.data.pipeline`), evaluation, the exporter's verification clips and TTA.
- `tta_starts` / `tta_crops`: the paper's test-time augmentation, `n` crops at
  linspace(0, N - crop, n) (truncated to integers; all at 0 for a clip shorter than a
  crop, which is then wrap-padded). Used by evaluation, the TF Serving client and the
  exporter's verification (`keras_mgc.export.clips.crops`).
- `window_starts` / `Windower`: the tagger's streaming windows (`keras_mgc.tag`): every
  `hop` samples from 0, plus one window aligned to the end when the regular ones stop
  short; a clip shorter than one window is looped to fill it. The browser page does the
  same in JavaScript (web/js/windows.js, checked against this in tests/test_web.py).
- `covering_windows`: windows of one fixed length that cover a whole clip (the tagger's
  windows with hop = window): whole-clip evaluation of a model built for one input length
  (VGG) averages over them.
- `crop_length`: the crop of a recipe in its input's units (samples, or mel frames);
  `seconds_to_samples`: a crop given in seconds (`data.crop_seconds`) at the model's rate,
  which must come to a whole number of samples.

Why wrap-padding and looping rather than zeros: the front end subtracts each mel bin's mean
over its input, and zero padding adds frames at log(1e-6) that pull every bin's mean far
below what the model saw in training (numbers in `keras_mgc.tag`'s docstring).

>>> import numpy as np
>>> crop(np.arange(3), 0, 7).tolist()
[0, 1, 2, 0, 1, 2, 0]
>>> tta_starts(100, 40, 4).tolist()
[0, 20, 40, 60]
>>> window_starts(10, 4, 3)
[0, 3, 6]
>>> covering_windows(np.arange(10), 4).tolist()
[[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from keras_mgc.contract import DEFAULT_CROP_SAMPLES, crop_frames

__all__ = ["crop", "tta_starts", "tta_crops", "window_starts", "covering_windows", "Windower", "crop_length",
           "seconds_to_samples"]


def crop(clip: np.ndarray, start: int, size: int) -> np.ndarray:
    """`size` samples (or frames) from `start`; a clip shorter than `size` is wrap-padded."""
    n = clip.shape[0]
    if n >= size:
        return np.asarray(clip[start : start + size])
    return np.take(clip, np.arange(size) % n, axis=0)


def tta_starts(length: int, size: int, n_crops: int) -> np.ndarray:
    """The paper's TTA crop starts: linspace(0, N - crop, n) truncated to integers (0 for short clips)."""
    return np.linspace(0, max(length - size, 0), n_crops).astype(np.int64)


def tta_crops(clip: np.ndarray, size: int = DEFAULT_CROP_SAMPLES, n_crops: int = 16) -> np.ndarray:
    """(n_crops, size[, bins]) crops at the paper's TTA positions: a fixed-shape batch.

    A clip shorter than `size` is wrap-padded (every crop is then the same looped clip).
    """
    clip = np.asarray(clip)
    return np.stack([crop(clip, int(s), size) for s in tta_starts(clip.shape[0], size, n_crops)])


def window_starts(n: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows over `n` samples (see `keras_mgc.tag`'s docstring: hop-spaced windows plus one aligned to the end)."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] + window < n:
        starts.append(n - window)
    return starts


def covering_windows(clip: np.ndarray, size: int) -> np.ndarray:
    """(n, size[, bins]) windows of exactly `size` that together cover the whole clip.

    Back to back from the start, the last one aligned to the end (`window_starts` with hop =
    window); a clip shorter than `size` is wrap-padded into one window. A model whose input
    length is fixed sees the whole clip this way, each part once (the end-aligned window
    overlaps its neighbour).
    """
    clip = np.asarray(clip)
    return np.stack([crop(clip, start, size) for start in window_starts(clip.shape[0], size, size)])


class Windower:
    """Cuts a stream of blocks into windows (the same as `window_starts`) in bounded memory.

    Keeps only the samples still needed: from the next window's start, and the last
    `window` samples (for the end-aligned tail window and the short-song loop).
    """

    def __init__(self, window: int, hop: int) -> None:
        self.window, self.hop = window, hop
        self.total = 0  # samples seen
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # absolute index of _buf[0]
        self._next = 0  # next regular window start
        self._last_end = 0  # end of the last window given out

    def feed(self, block: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        self._buf = np.concatenate([self._buf, block]) if len(self._buf) else block
        self.total += len(block)
        while self._next + self.window <= self.total:
            at = self._next - self._buf_start
            yield self._next, self._buf[at : at + self.window]
            self._last_end = self._next + self.window
            self._next += self.hop
        keep_from = max(self._buf_start, min(self._next, self.total - self.window))
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :].copy()
            self._buf_start = keep_from

    @property
    def buffered(self) -> int:
        """Samples held now (bounded by the window plus one block)."""
        return len(self._buf)

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        """The tail window, or the looped song when it is shorter than one window."""
        if self.total == 0:
            return
        if self.total < self.window:
            yield 0, np.resize(self._buf, self.window)  # np.resize repeats the array
        elif self._last_end < self.total:
            yield self.total - self.window, self._buf[len(self._buf) - self.window :]


def crop_length(recipe: Any) -> int:
    """The training/evaluation crop of a recipe in model-input units: samples, or mel frames."""
    samples = recipe.data.crop_samples
    if recipe.model.input == "mel":
        return crop_frames(samples, recipe.model.frontend.hop_length)
    return samples


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """`seconds` at `sample_rate` as a whole number of samples; ValueError when it is not one
    (within a thousandth of a sample), so that no crop length is silently rounded."""
    samples = seconds * sample_rate
    if abs(samples - round(samples)) > 1e-3:
        raise ValueError(f"{seconds:g} s is {samples:.3f} samples at {sample_rate} Hz, not a whole number")
    return int(round(samples))
