"""TFLite artifacts: float32, float16, dynamic-range int8 and full int8, builtin ops only.

Contract (`keras_mgc.contract`; the on-device tagger `keras_mgc.tag` relies on it): signature
``serving_default`` with input ``waveform`` float32 [batch, samples] (both dimensions resizable
as exported here) and outputs ``probabilities`` [batch, n_classes] and ``embedding`` [batch, D];
signature ``classify_mel`` (``mel`` before issue 10) with input ``mel`` [batch, frames, 48] and
the same outputs. No Flex (Select TF) ops: the converter runs
with TFLITE_BUILTINS only and `op_counts` checks the result.

Precisions (what is kept in float, and why, in BUILD_NOTES.md "Export"):

- ``float32``: the Keras graph with a float32 DFT (TFLite has no float64 matmul).
- ``float16``: weights stored as float16, computed in float32. The front end's tables are
  split into two float16 halves summed at run time (`LogMelSpectrogram(table_mode="runtime_split16")`), so the
  front end keeps ~22-bit tables instead of 11-bit ones.
- ``dynamic_int8``: int8 weights, activations quantised on the fly per op. The converter
  has no per-op opt-out here, so the front end's tables are kept out of the constant pool
  (computed at run time) and its matmuls stay float.
- ``int8``: full integer quantisation calibrated on crops of real clips (both signatures),
  then selective quantisation (`mlir_quantize` with a denylist, as the QuantizationDebugger
  does): the front end, the attentive pooling and the head stay float, inputs and outputs
  float32. Everything in between (the convolutions, the bulk of the FLOPs) is int8.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc.contract import (MEL_INPUT, MEL_SIGNATURE, SIGNATURE, SIGNATURES, WAVEFORM_INPUT, ContractError,
                                check_signatures)
from keras_mgc.export import ExportError
from keras_mgc.export.graphs import ServingModels, probabilities_and_embedding

__all__ = ["PRECISIONS", "TABLE_MODE", "SPECTRUM", "INT8_FLOAT_SCOPES", "op_counts", "non_builtin_ops", "tensor_names",
           "tensor_types", "output_tensor_names", "float_denylist", "TFLiteConverter", "selective_int8",
           "check_contract"]

PRECISIONS = ("float32", "float16", "dynamic_int8", "int8")

#: Front-end table mode per precision (see keras_mgc.frontend.LogMelSpectrogram table_mode).
TABLE_MODE = {"float32": "constant", "float16": "runtime_split16", "dynamic_int8": "runtime", "int8": "runtime"}

#: The front end's spectrum path in every TFLite artifact: the folded DFT matmul ran faster
#: under XNNPACK than the builtin RFFT2D (BUILD_NOTES.md "FFT front end").
SPECTRUM = "matmul"

#: Layers (Keras name scopes) that full int8 keeps in float.
INT8_FLOAT_SCOPES = ("frontend", "pooling", "head")



def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - TF ships the same module
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def op_counts(flatbuffer: bytes) -> Counter:
    """Operator name -> count over all subgraphs; custom ops appear as "CUSTOM:<code>"."""
    schema = _schema()
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
        codes.append(name)
    counts: Counter = Counter()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(i).OpcodeIndex()]] += 1
    return counts


def non_builtin_ops(flatbuffer: bytes) -> list[str]:
    """Custom (including Flex) operators in a model; empty when it runs on builtins alone."""
    return sorted(op for op in op_counts(flatbuffer) if op.startswith("CUSTOM"))


def _subgraphs(flatbuffer: bytes):
    """The model's subgraphs (one per signature) as flatbuffer schema objects."""
    model = _schema().Model.GetRootAsModel(flatbuffer, 0)
    return [model.Subgraphs(g) for g in range(model.SubgraphsLength())]


def tensor_names(flatbuffer: bytes) -> list[str]:
    """Names of all tensors in all subgraphs."""
    return [graph.Tensors(i).Name().decode() for graph in _subgraphs(flatbuffer) for i in range(graph.TensorsLength())]


def tensor_types(flatbuffer: bytes) -> dict[str, str]:
    """Tensor name -> element type name ("FLOAT32", "INT8", ...) over all subgraphs."""
    types = {v: k for k, v in vars(_schema().TensorType).items() if not k.startswith("_")}
    return {tensor.Name().decode(): types.get(tensor.Type(), str(tensor.Type()))
            for graph in _subgraphs(flatbuffer)
            for tensor in (graph.Tensors(i) for i in range(graph.TensorsLength()))}


def output_tensor_names(flatbuffer: bytes) -> list[str]:
    return [graph.Tensors(graph.Outputs(i)).Name().decode()
            for graph in _subgraphs(flatbuffer) for i in range(graph.OutputsLength())]


def float_denylist(flatbuffer: bytes, scopes: Iterable[str] = INT8_FLOAT_SCOPES) -> list[str]:
    """Tensors produced inside the given Keras layers, plus the model outputs (kept float)."""
    pattern = re.compile(r"(^|/)(" + "|".join(map(re.escape, scopes)) + r")(_\d+)?/")
    names = [n for n in tensor_names(flatbuffer) if any(pattern.search(part) for part in n.split(";"))]
    return sorted(set(names) | set(output_tensor_names(flatbuffer)))


def _write_temp_saved_model(models: ServingModels, table_mode: str, directory: Path) -> Path:
    import keras
    import tensorflow as tf

    wave, mel = models.waveform("float32", table_mode=table_mode, spectrum=SPECTRUM), models.mel()
    archive = keras.export.ExportArchive()
    archive.track(wave)
    archive.track(mel)
    archive.add_endpoint(SIGNATURE, lambda waveform: probabilities_and_embedding(wave(waveform, training=False)),
                         input_signature=[models.input_spec(WAVEFORM_INPUT)])
    archive.add_endpoint(MEL_SIGNATURE, lambda mel_: probabilities_and_embedding(mel(mel_, training=False)),
                         input_signature=[models.input_spec(MEL_INPUT)])
    archive.write_out(str(directory), verbose=False)
    return directory


class TFLiteConverter:
    """Converts one ServingModels to each precision (temporary SavedModels shared between them)."""

    def __init__(self, models: ServingModels, workdir: Path | None = None) -> None:
        self.models = models
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="keras-mgc-tflite-"))
        self._saved: dict[str, Path] = {}

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            for path in self._saved.values():
                shutil.rmtree(path, ignore_errors=True)

    def _saved_model(self, table_mode: str) -> Path:
        if table_mode not in self._saved:
            self._saved[table_mode] = _write_temp_saved_model(self.models, table_mode,
                                                              self.workdir / f"savedmodel_{table_mode}")
        return self._saved[table_mode]

    def convert(self, precision: str,
                representative: Callable[[], Iterator[tuple[str, dict[str, np.ndarray]]]] | None = None) -> bytes:
        """The flatbuffer for `precision`; `representative` is needed for "int8"."""
        import tensorflow as tf

        if precision not in PRECISIONS:
            raise ValueError(f"unknown TFLite precision {precision!r} (known: {', '.join(PRECISIONS)})")
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(self._saved_model(TABLE_MODE[precision])), signature_keys=list(SIGNATURES))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex delegate
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "dynamic_int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif precision == "int8":
            if representative is None:
                raise ExportError("full int8 needs representative audio (--representative-audio)")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter._experimental_calibrate_only = True  # calibrate, then quantise selectively
            calibrated = converter.convert()
            return selective_int8(calibrated)
        return converter.convert()


def selective_int8(calibrated: bytes, scopes: Iterable[str] = INT8_FLOAT_SCOPES) -> bytes:
    """Full int8 from a calibrated model, keeping the tensors of `scopes` and the outputs in float."""
    from tensorflow.lite.python import convert as tfl_convert

    return tfl_convert.mlir_quantize(calibrated, denylisted_nodes=float_denylist(calibrated, scopes))


def check_contract(flatbuffer: bytes, num_classes: int, embedding_size: int, n_mels: int) -> dict[str, Any]:
    """Load in LiteRT and check builtin-only ops and the contract (`keras_mgc.contract.check_signatures`).

    Returns the signatures' tensor details, the fixed dimensions found (None where resizable)
    and the op counts.
    """
    from ai_edge_litert.interpreter import Interpreter

    custom = non_builtin_ops(flatbuffer)
    if custom:
        raise ExportError(f"TFLite model needs non-builtin ops {custom} (Flex delegate); builtins only are allowed")
    try:
        report = check_signatures(Interpreter(model_content=flatbuffer), num_classes, embedding_size=embedding_size,
                                  n_mels=n_mels, require_mel=True, labels_source="the run")
    except ContractError as exc:
        raise ExportError(f"TFLite model: {exc}") from exc
    details: dict[str, Any] = dict(report.details)
    details["fixed"] = {"batch": report.fixed_batch, "samples": report.fixed_samples}
    details["ops"] = dict(sorted(op_counts(flatbuffer).items()))
    return details
