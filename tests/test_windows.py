"""Crops and windows (keras_mgc.windows): wrap-padding, the paper's TTA positions, crop units.

The tagger's streaming windows are tested with the tagger (tests/test_tag.py).
"""

from __future__ import annotations

import numpy as np

from keras_mgc import windows as W
from keras_mgc.config import parse_recipe


def test_crop_and_wrap_padding():
    clip = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(W.crop(clip, 3, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(W.crop(clip[:3], 0, 7), [0, 1, 2, 0, 1, 2, 0])  # shorter than a crop
    mel = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert W.crop(mel, 0, 5).shape == (5, 4)


def test_tta_positions_follow_linspace():
    np.testing.assert_array_equal(W.tta_starts(661500, 44356, 16), np.linspace(0, 661500 - 44356, 16).astype(int))
    assert W.tta_starts(1000, 44356, 16).tolist() == [0] * 16
    crops = W.tta_crops(np.arange(100, dtype=np.float32), 10, 4)
    assert crops.shape == (4, 10) and crops[-1, -1] == 99 and crops[0, 0] == 0


def test_short_clips_are_wrap_padded_in_tta_as_in_training():
    clip = np.arange(7, dtype=np.float32)
    crops = W.tta_crops(clip, 10, 3)
    assert crops.shape == (3, 10)
    np.testing.assert_array_equal(crops[2], [0, 1, 2, 3, 4, 5, 6, 0, 1, 2])


def test_crop_length_is_in_the_model_inputs_units():
    doc = {"name": "t", "data": {"dataset": "synthetic", "crop_samples": 44356}}
    assert W.crop_length(parse_recipe(doc)) == 44356
    assert W.crop_length(parse_recipe({**doc, "model": {"input": "mel"}})) == 174  # 1 + 44356 // 256 frames
