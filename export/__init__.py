"""Export a trained genre classifier to SavedModel (TF Serving), TFLite and ONNX, each proven
equal to the Keras model on real clips.

Every artifact takes raw mono audio at 22,050 Hz (float32, [batch, samples], any length of at
least one crop) with the log-mel front end inside, has a second entry point for precomputed
48-bin log-mels, and returns genre probabilities and the pooled embedding (the names and
defaults: `keras_mgc.contract`). One command builds
them all from a run directory and verifies each one against the reference Keras model:

    python -m keras_mgc.export --run runs/gtzan_cv --formats all

Layout of the output (``<run>/export/`` by default)::

    saved_model/<model_name>/<version>/...     TF Serving layout (assets.extra/: metadata, labels)
    saved_model/models.config                  model server config (base_path /models/<name>)
    saved_model/batching_parameters.txt        --batching_parameters_file
    tflite/model_{float32,float16,dynamic_int8,int8}.tflite  (+ <stem>.json, labels.txt)
    onnx/model.onnx, onnx/model_mel.onnx       (+ <stem>.json, labels.txt)
    report.json, report.md                     size, max |dp|, top-1 agreement, latency

A failed verification publishes the artifacts to ``<out>.failed/`` instead (never where a
deployment would pick them up) and exits non-zero. docs/serving.md documents the signatures.

Module map: trained_model (run dir / checkpoint -> float32 model + metadata), graphs
(serving graphs), saved_model / tflite / onnx_export (the converters), clips (real evaluation
and representative audio), verify (runners, agreement, latency, thresholds), report, publish
(the staging folder), serving_client (TF Serving REST and gRPC). The contract the artifacts
follow is `keras_mgc.contract`; the TF Serving stand-in the client is tested against lives in
tests/serving_emulator.py.

This folder is the package `keras_mgc.export` (installed there; `keras_mgc/export` is a link
to it). From a checkout, ``python -m export`` also works (its ``__main__`` runs
`keras_mgc.export.cli`), but the documented command is ``python -m keras_mgc.export``.
"""

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """A problem that stops the export, with a message meant for the user (no traceback)."""
