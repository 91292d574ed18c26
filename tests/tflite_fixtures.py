"""Small TFLite models for the tagger's tests, built to the exporter's contract.

The contract (keras_mgc/contract.py): a "serving_default" signature with input "waveform"
float32 [batch, samples] at 22,050 Hz and outputs "probabilities" (softmax applied) and
"embedding"; a metadata JSON with the same stem (class_names, sample_rate, crop_samples) and
a labels.txt beside it. These helpers import TensorFlow; the tagger itself must not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_mgc.contract import DEFAULT_CROP_SAMPLES as CROP
from keras_mgc.contract import DEFAULT_SAMPLE_RATE as SAMPLE_RATE

GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


@dataclass
class TestModel:
    """A converted test model: the .tflite path and a Keras twin giving the same numbers."""

    __test__ = False  # not a pytest test class

    path: Path
    class_names: list[str]
    keras_model: object  # keras.Model waveform -> {"probabilities", "embedding"}

    def keras_probabilities(self, windows: np.ndarray) -> np.ndarray:
        return np.asarray(self.keras_model(np.asarray(windows, np.float32), training=False)["probabilities"])


def _crops(clips: list[np.ndarray], rng: np.random.Generator, per_clip: int) -> np.ndarray:
    out = []
    for clip in clips:
        if len(clip) <= CROP:
            clip = np.resize(clip, CROP + 1)
        for start in rng.integers(0, len(clip) - CROP, per_clip):
            out.append(clip[start : start + CROP])
    return np.stack(out).astype(np.float32)


def build_test_model(out_dir: Path, gtzan: Path | None = None, steps: int = 12, seed: int = 0,
                     onnx_dir: Path | None = None) -> TestModel:
    """Build a small CCS ECAPA, train it a few steps on real GTZAN crops (if given), convert it.

    Writes out_dir/model_float32.tflite, model_float32.json and labels.txt; with `onnx_dir`,
    also the exporter's ONNX waveform model of the same weights there (model.onnx, model.json,
    labels.txt), as the browser page loads it.
    """
    import keras

    from keras_mgc import presets
    from keras_mgc.models import build_model

    keras.utils.set_random_seed(seed)
    cfg = presets.model_config("tiny")
    model = build_model(cfg, num_classes=len(GENRES))
    if gtzan is not None and steps:
        from keras_mgc.audio import load_audio

        rng = np.random.default_rng(seed)
        clips, labels = [], []
        for label, genre in enumerate(GENRES):
            for path in sorted((gtzan / genre).glob("*.wav"))[1:5]:  # tracks 1-4 (the tests tag track 0)
                clips.append(load_audio(path))
                labels.append(label)
        x = _crops(clips, rng, per_clip=2)
        y = np.repeat(np.asarray(labels), 2)
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        order = rng.permutation(len(x))
        batch = 16
        for step in range(steps):
            idx = np.resize(order, (step + 1) * batch)[step * batch :]
            model.train_on_batch(x[idx], y[idx])

    # The exporter's own conversion (SavedModel through ExportArchive, then TFLite builtins),
    # with its float32-DFT serving graph sharing the trained weights.
    from keras_mgc.export.graphs import ServingModels, probabilities_and_embedding
    from keras_mgc.export.tflite import TFLiteConverter

    models = ServingModels(model=model, cfg=cfg, num_classes=len(GENRES))
    waveform = models.waveform("float32")
    inputs = keras.Input((None,), name="waveform")
    serving = keras.Model(inputs, probabilities_and_embedding(waveform(inputs)))
    out_dir.mkdir(parents=True, exist_ok=True)
    converter = TFLiteConverter(models)
    try:
        flatbuffer = converter.convert("float32")
    finally:
        converter.close()
    path = out_dir / "model_float32.tflite"
    path.write_bytes(flatbuffer)
    write_metadata(path, GENRES)
    if onnx_dir is not None:
        from keras_mgc.export.onnx_export import convert

        onnx_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = onnx_dir / "model.onnx"
        onnx_path.write_bytes(convert(models, "waveform"))
        write_metadata(onnx_path, GENRES)
    return TestModel(path=path, class_names=list(GENRES), keras_model=serving)


def write_metadata(model_path: Path, class_names: list[str], **extra) -> None:
    """The exporter's side files: <stem>.json and labels.txt beside the model."""
    meta = {"class_names": list(class_names), "sample_rate": SAMPLE_RATE, "crop_samples": CROP} | extra
    model_path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    (model_path.parent / "labels.txt").write_text("\n".join(class_names) + "\n")


def build_toy_model(path: Path, kind: str) -> Path:
    """A tiny .tflite that breaks the contract in one way, for the tagger's error paths.

    kind: "wrong_signature" (input "x", output "y"), "logits" (outputs that do not sum to 1),
    "nan" (non-finite probabilities, as a model whose weights were left unfrozen gives),
    "fixed" (a valid model whose input is fixed at [2, CROP] instead of resizable).
    """
    import tensorflow as tf

    shape = [2, CROP] if kind == "fixed" else [None, None]
    spec = [tf.TensorSpec(shape, tf.float32, name="x" if kind == "wrong_signature" else "waveform")]

    def features(w):
        return tf.stack([tf.reduce_mean(w, axis=1) + float(i) for i in range(len(GENRES))], axis=1)

    if kind == "wrong_signature":
        fn = tf.function(lambda x: {"y": x * 2.0}, input_signature=spec, autograph=False)
    elif kind == "logits":
        fn = tf.function(lambda waveform: {"probabilities": features(waveform)}, input_signature=spec, autograph=False)
    elif kind == "fixed":  # input fixed at [2, CROP]
        def peaked(waveform):  # logits -(i - 4.5 - 5 m)^2: the peak class moves with the mean m
            f = features(waveform)
            return {"probabilities": tf.nn.softmax(-tf.square(f - 6.0 * f[:, :1] - 4.5))}

        fn = tf.function(peaked, input_signature=spec, autograph=False)
    elif kind == "nan":
        fn = tf.function(lambda waveform: {"probabilities": tf.math.log(-1.0 - tf.abs(features(waveform)))},
                         input_signature=spec, autograph=False)
    else:
        raise ValueError(kind)
    module = tf.Module()
    module.fn = fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], module)
    path.write_bytes(converter.convert())
    return path
