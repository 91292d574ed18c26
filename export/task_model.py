"""Task-ready TFLite: the model MediaPipe Tasks' `AudioClassifier` loads as it is.

`tflite/model_task_<precision>.tflite` (float32 and dynamic_int8): one subgraph, one input
``waveform`` float32 [1, window] of raw mono audio at the model's sample rate (window = the
training crop unless told otherwise), one output ``probabilities`` float32 [1, n_classes], and
TFLite Model Metadata (export/tflite_metadata.py) naming the sample rate, the channel count and
the labels file. MediaPipe cuts the audio into windows of exactly that many samples itself
(resampling to the metadata's rate first), so the window is fixed; the general artifacts
(`model_<precision>.tflite`) keep resizable batch and length for the project's own tagger.

The signature keeps the export contract's names (``serving_default``, ``waveform``,
``probabilities``), so `keras_mgc.tag` and the export verification run the file too. The front
end is the same as the other TFLite artifacts' (float32 folded DFT matmul, tables out of the
constant pool for dynamic-range int8).
"""

from __future__ import annotations

import tempfile
from typing import Any

from keras_mgc.contract import (EMBEDDING, MEL_SIGNATURE, PROBABILITIES, SIGNATURE, WAVEFORM_INPUT, ContractError,
                                check_signatures)
from keras_mgc.export import ExportError
from keras_mgc.export.graphs import ServingModels
from keras_mgc.export.tflite import SPECTRUM, TABLE_MODE, non_builtin_ops
from keras_mgc.export.tflite_metadata import AudioClassifierMetadata, attach

#: Precisions written as task models: what phones run (float16 and full int8 bring no speed
#: over these two on the CPU delegate, BENCHMARKS.md).
TASK_PRECISIONS = ("float32", "dynamic_int8")


def task_filename(precision: str) -> str:
    return f"model_task_{precision}.tflite"


def convert_task(models: ServingModels, precision: str, window: int) -> bytes:
    """The bare (metadata-free) fixed-window flatbuffer for `precision`."""
    import keras
    import tensorflow as tf

    if precision not in TASK_PRECISIONS:
        raise ExportError(f"task models are built for {', '.join(TASK_PRECISIONS)}, not {precision!r}")
    min_window = 2 * models.cfg.frontend.hop_length
    if window <= min_window:
        raise ExportError(f"task window of {window} samples is too short (the front end needs > {min_window})")
    graph = models.waveform("float32", table_mode=TABLE_MODE[precision], spectrum=SPECTRUM)
    with tempfile.TemporaryDirectory(prefix="keras-mgc-task-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(graph)
        archive.add_endpoint(
            SIGNATURE,
            lambda waveform: {PROBABILITIES: keras.ops.softmax(graph(waveform, training=False)["logits"], axis=-1)},
            input_signature=[tf.TensorSpec([1, window], tf.float32, name=WAVEFORM_INPUT)])
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if precision == "dynamic_int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    custom = non_builtin_ops(flatbuffer)
    if custom:
        raise ExportError(f"task model needs non-builtin ops {custom}; builtins only are allowed")
    return flatbuffer


def task_metadata(name: str, class_names: list[str], sample_rate: int, window: int, version: int,
                  description: str = "", author: str = "", license: str = "") -> AudioClassifierMetadata:
    seconds = window / sample_rate
    return AudioClassifierMetadata(
        name=name,
        labels=list(class_names),
        sample_rate=sample_rate,
        channels=1,
        description=description or (
            f"Music genre classifier (keras-mgc, ECAPA-TDNN): {len(class_names)} genres from "
            f"{window} samples ({seconds:.2f} s) of mono audio at {sample_rate} Hz."),
        version=str(version),
        author=author,
        license=license,
        input_name=WAVEFORM_INPUT,
        input_description=f"Mono float32 audio in [-1, 1] at {sample_rate} Hz, {window} samples.",
        output_name=PROBABILITIES,
        output_description="Softmax probability of each genre (labels.txt order).",
    )


def build_task_model(models: ServingModels, precision: str, window: int,
                     meta: AudioClassifierMetadata) -> tuple[bytes, dict[str, Any]]:
    """The task-ready model: the fixed-window flatbuffer with its metadata and labels attached.

    Returns the flatbuffer and what `check_task_contract` found in it (raises ExportError when it fails).
    """
    flatbuffer = attach(convert_task(models, precision, window), meta)
    return flatbuffer, check_task_contract(flatbuffer, len(meta.labels), window)


def task_io_spec(waveform_spec: dict[str, Any], window: int) -> dict[str, Any]:
    """The side-file description of a task model's entry point, from the waveform entry point's."""
    inp = dict(waveform_spec["input"])
    inp.update(shape=[1, window], min_samples=window,
               description=f"exactly {window} samples of mono float32 audio in [-1, 1] at {inp['sample_rate']} Hz")
    probabilities = dict(waveform_spec["outputs"]["probabilities"])
    probabilities["shape"] = [1, probabilities["shape"][-1]]
    return {"input": inp, "outputs": {"probabilities": probabilities}}


def check_task_contract(flatbuffer: bytes, num_classes: int, window: int) -> dict[str, Any]:
    """Load in LiteRT and check the export contract (`keras_mgc.contract.check_signatures`) and what a task
    model adds: the waveform signature only, probabilities only, one input and one output tensor, input
    fixed at [1, window], output [1, n_classes], the labels in the metadata."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_mgc.export.tflite_metadata import read

    interpreter = Interpreter(model_content=flatbuffer)
    try:
        report = check_signatures(interpreter, num_classes)
    except ContractError as exc:
        raise ExportError(f"task model: {exc}") from exc
    signatures = interpreter.get_signature_list()
    if list(signatures) != [SIGNATURE] or signatures[SIGNATURE]["outputs"] != [PROBABILITIES]:
        raise ExportError(f"task model signatures are {signatures}, expected only {SIGNATURE}: {WAVEFORM_INPUT} -> "
                          f"{PROBABILITIES} (no {EMBEDDING} output, no {MEL_SIGNATURE} signature)")
    if len(interpreter.get_input_details()) != 1 or len(interpreter.get_output_details()) != 1:
        raise ExportError("a task model has exactly one input and one output tensor")
    found = report.details[SIGNATURE]
    if (report.fixed_batch, report.fixed_samples) != (1, window):
        raise ExportError(f"task model input has shape signature {found['inputs'][WAVEFORM_INPUT]['shape_signature']}, "
                          f"expected fixed [1, {window}]")
    out_shape = found["outputs"][PROBABILITIES]["shape_signature"]
    if out_shape[0] != 1:  # check_signatures checked [batch, num_classes]
        raise ExportError(f"task model output has shape {out_shape}, expected [1, {num_classes}]")
    meta = read(flatbuffer)
    if meta["labels"] is None or len(meta["labels"]) != num_classes:
        raise ExportError(f"task model metadata lists {meta['labels']!r} as labels for {num_classes} classes")
    audio = meta["subgraphs"][0]["inputs"][0].get("audio_properties")
    return {"input_shape": [1, window], "output_shape": [1, num_classes], "audio_properties": audio,
            "metadata_name": meta["name"], "labels_file": next(iter(meta["files"]), None)}
