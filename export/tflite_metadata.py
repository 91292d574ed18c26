"""TFLite Model Metadata for an audio classifier, written and read with the `flatbuffers` package.

MediaPipe Tasks' `AudioClassifier` (and the TFLite Task Library before it) refuses a model
without TFLite Model Metadata: it reads the input's sample rate and channel count from the
input tensor's `AudioProperties` and the class names from a `TENSOR_AXIS_LABELS` file
attached to the output tensor and zipped onto the end of the model file.

The metadata is a FlatBuffer (root `ModelMetadata`, file identifier "M001") defined by the
public `metadata_schema.fbs` (TensorFlow Lite Support / MediaPipe). The usual writer,
`tflite-support` 0.4.4, pins protobuf 3 and needs libusb, so it cannot share TensorFlow 2.21's
venv (BUILD_NOTES.md "Task-ready TFLite"). This module writes the few tables an audio
classifier needs with `flatbuffers.Builder` (already a TensorFlow dependency), with the field
slots of metadata_schema.fbs written out below, and reads them back with the same slots for
the tests and for `describe`. The metadata buffer is attached to the model exactly as
MediaPipe's `MetadataPopulator` does: a `Buffer` plus a `Metadata{name: "TFLITE_METADATA"}`
entry in the TFLite `Model`, then the associated files appended as a stored (uncompressed)
zip archive.

Example (the metadata alone; `attach(model_bytes, meta)` adds it and the label file to a
TFLite model, and `read(model_bytes)` reads both back, as tests/test_mediapipe.py checks):
    >>> meta = AudioClassifierMetadata(name="genres", labels=["blues", "rock"], sample_rate=22050)
    >>> parsed = parse_metadata(metadata_flatbuffer(meta))
    >>> parsed["subgraphs"][0]["inputs"][0]["audio_properties"]
    {'sample_rate': 22050, 'channels': 1}
    >>> parsed["subgraphs"][0]["outputs"][0]["associated_files"]
    [{'name': 'labels.txt', 'type': 2}]
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import flatbuffers
from flatbuffers import number_types as N
from flatbuffers.table import Table

#: The name of the TFLite Model.metadata entry that holds the metadata buffer.
METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
#: AudioProperties were added in metadata schema 1.3.0, the newest feature used here.
MIN_PARSER_VERSION = "1.3.0"

# metadata_schema.fbs field slots (a union takes two slots: its type, then its value).
_ASSOCIATED_FILE = {"name": 0, "description": 1, "type": 2}
_AUDIO_PROPERTIES = {"sample_rate": 0, "channels": 1}
_CONTENT = {"properties_type": 0, "properties": 1}
_PROCESS_UNIT = {"options_type": 0, "options": 1}
_SCORE_CALIBRATION = {"score_transformation": 0, "default_score": 1}
_TENSOR = {"name": 0, "description": 1, "content": 3, "process_units": 4, "stats": 5, "associated_files": 6}
_STATS = {"max": 0, "min": 1}
_SUBGRAPH = {"name": 0, "description": 1, "inputs": 2, "outputs": 3}
_MODEL = {"name": 0, "description": 1, "version": 2, "subgraphs": 3, "author": 4, "license": 5,
          "min_parser_version": 7}
#: Enum and union values of the schema.
TENSOR_AXIS_LABELS = 2
TENSOR_AXIS_SCORE_CALIBRATION = 4
AUDIO_PROPERTIES = 4  # ContentProperties: FeatureProperties 1, ImageProperties 2, BoundingBoxProperties 3
SCORE_CALIBRATION_OPTIONS = 2  # ProcessUnitOptions: NormalizationOptions 1
SCORE_TRANSFORMATIONS = {"IDENTITY": 0, "LOG": 1, "INVERSE_LOGISTIC": 2}


@dataclass
class AudioClassifierMetadata:
    """What MediaPipe's AudioClassifier needs, plus the descriptive fields people read."""

    name: str
    labels: list[str]
    sample_rate: int
    channels: int = 1
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    input_name: str = "audio"
    input_description: str = "Mono float32 audio in [-1, 1]."
    output_name: str = "probabilities"
    output_description: str = "Softmax probability of each class."
    labels_file: str = "labels.txt"
    #: Optional score calibration: a file of "scale,slope,offset[,min_score]" lines, one per label
    #: (TENSOR_AXIS_SCORE_CALIBRATION), and how scores are transformed before it.
    calibration_lines: list[str] | None = None
    score_transformation: str = "IDENTITY"
    default_score: float = 0.0
    calibration_file: str = "score_calibration.txt"
    extra_files: dict[str, bytes] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.labels or any(not str(label).strip() or "\n" in str(label) for label in self.labels):
            raise ValueError("metadata labels must be non-empty single-line strings")
        if self.sample_rate <= 0 or self.channels <= 0:
            raise ValueError(f"sample_rate and channels must be positive, got {self.sample_rate}, {self.channels}")
        if self.calibration_lines is not None and len(self.calibration_lines) != len(self.labels):
            raise ValueError(f"score calibration has {len(self.calibration_lines)} lines for "
                             f"{len(self.labels)} labels")
        if self.score_transformation not in SCORE_TRANSFORMATIONS:
            raise ValueError(f"score_transformation must be one of {sorted(SCORE_TRANSFORMATIONS)}")


# --------------------------------------------------------------------------- writing


def _strings(b: flatbuffers.Builder, values: dict[str, str]) -> dict[str, int]:
    return {k: b.CreateString(v) for k, v in values.items() if v}


def _table(b: flatbuffers.Builder, n_slots: int, offsets: dict[int, int], scalars: dict[int, tuple[str, Any]]) -> int:
    """One table: `offsets` slot -> offset of a child; `scalars` slot -> (kind, value)."""
    b.StartObject(n_slots)
    for slot, (kind, value) in scalars.items():
        {"uint": b.PrependUint32Slot, "byte": b.PrependInt8Slot, "ubyte": b.PrependUint8Slot,
         "float": b.PrependFloat32Slot}[kind](slot, value, 0)
    for slot, offset in offsets.items():
        b.PrependUOffsetTRelativeSlot(slot, offset, 0)
    return b.EndObject()


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _associated_file(b: flatbuffers.Builder, name: str, description: str, kind: int) -> int:
    s = _strings(b, {"name": name, "description": description})
    return _table(b, 5, {_ASSOCIATED_FILE[k]: v for k, v in s.items()}, {_ASSOCIATED_FILE["type"]: ("byte", kind)})


def metadata_flatbuffer(meta: AudioClassifierMetadata) -> bytes:
    """The ModelMetadata FlatBuffer (file identifier "M001") for one audio-in, scores-out subgraph."""
    meta.validate()
    b = flatbuffers.Builder(1024)
    # input tensor: AudioProperties content
    audio = _table(b, 2, {}, {_AUDIO_PROPERTIES["sample_rate"]: ("uint", meta.sample_rate),
                              _AUDIO_PROPERTIES["channels"]: ("uint", meta.channels)})
    content = _table(b, 3, {_CONTENT["properties"]: audio}, {_CONTENT["properties_type"]: ("ubyte", AUDIO_PROPERTIES)})
    s = _strings(b, {"name": meta.input_name, "description": meta.input_description})
    input_tensor = _table(b, 7, {_TENSOR[k]: v for k, v in s.items()} | {_TENSOR["content"]: content}, {})
    # output tensor: labels (and optional calibration)
    files = [_associated_file(b, meta.labels_file, "Labels for the classes the model scores.", TENSOR_AXIS_LABELS)]
    process_units = []
    if meta.calibration_lines is not None:
        files.append(_associated_file(b, meta.calibration_file, "Score calibration parameters per class.",
                                      TENSOR_AXIS_SCORE_CALIBRATION))
        options = _table(b, 2, {}, {
            _SCORE_CALIBRATION["score_transformation"]: ("byte", SCORE_TRANSFORMATIONS[meta.score_transformation]),
            _SCORE_CALIBRATION["default_score"]: ("float", float(meta.default_score))})
        process_units.append(_table(b, 2, {_PROCESS_UNIT["options"]: options},
                                    {_PROCESS_UNIT["options_type"]: ("ubyte", SCORE_CALIBRATION_OPTIONS)}))
    files_vec = _vector(b, files)
    units_vec = _vector(b, process_units) if process_units else None
    stats = _table(b, 2, {_STATS["max"]: _floats(b, [1.0]), _STATS["min"]: _floats(b, [0.0])}, {})
    s = _strings(b, {"name": meta.output_name, "description": meta.output_description})
    out_offsets = {_TENSOR[k]: v for k, v in s.items()} | {_TENSOR["associated_files"]: files_vec,
                                                           _TENSOR["stats"]: stats}
    if units_vec is not None:
        out_offsets[_TENSOR["process_units"]] = units_vec
    output_tensor = _table(b, 7, out_offsets, {})
    subgraph = _table(b, 10, {_SUBGRAPH["inputs"]: _vector(b, [input_tensor]),
                              _SUBGRAPH["outputs"]: _vector(b, [output_tensor])}, {})
    s = _strings(b, {"name": meta.name, "description": meta.description, "version": meta.version,
                     "author": meta.author, "license": meta.license, "min_parser_version": MIN_PARSER_VERSION})
    root = _table(b, 8, {_MODEL[k]: v for k, v in s.items()} | {_MODEL["subgraphs"]: _vector(b, [subgraph])}, {})
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _floats(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return b.EndVector()


def _associated_files(meta: AudioClassifierMetadata) -> dict[str, bytes]:
    files = {meta.labels_file: ("\n".join(map(str, meta.labels)) + "\n").encode()}
    if meta.calibration_lines is not None:
        files[meta.calibration_file] = ("\n".join(meta.calibration_lines) + "\n").encode()
    return files | dict(meta.extra_files)


def attach(model: bytes, meta: AudioClassifierMetadata) -> bytes:
    """`model` (a TFLite flatbuffer without metadata) with the metadata buffer and its files zipped on."""
    from keras_mgc.export.tflite import _schema

    schema = _schema()
    if zipfile.is_zipfile(io.BytesIO(model)):
        raise ValueError("the model already carries associated files; attach metadata to a bare TFLite flatbuffer")
    tflite = schema.ModelT.InitFromPackedBuf(model, 0)
    buffer = schema.BufferT()
    buffer.data = list(metadata_flatbuffer(meta))
    tflite.buffers = list(tflite.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(tflite.buffers) - 1
    tflite.metadata = [m for m in (tflite.metadata or []) if _name(m.name) != METADATA_NAME] + [entry]
    b = flatbuffers.Builder(len(model) + 4096)
    b.Finish(tflite.Pack(b), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in _associated_files(meta).items():
            archive.writestr(name, data)
    return out.getvalue()


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


# --------------------------------------------------------------------------- reading


def _field(tab: Table, slot: int) -> int:
    return tab.Offset(4 + 2 * slot)


def _string(tab: Table, slot: int) -> str | None:
    o = _field(tab, slot)
    return tab.String(o + tab.Pos).decode() if o else None


def _scalar(tab: Table, slot: int, flags: Any, default: Any = 0) -> Any:
    o = _field(tab, slot)
    return tab.Get(flags, o + tab.Pos) if o else default


def _child(tab: Table, slot: int) -> Table | None:
    o = _field(tab, slot)
    return Table(tab.Bytes, tab.Indirect(o + tab.Pos)) if o else None


def _children(tab: Table, slot: int) -> list[Table]:
    o = _field(tab, slot)
    if not o:
        return []
    start = tab.Vector(o)
    return [Table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(o))]


def _float_vector(tab: Table, slot: int) -> list[float]:
    o = _field(tab, slot)
    if not o:
        return []
    start = tab.Vector(o)
    return [tab.Get(N.Float32Flags, start + 4 * i) for i in range(tab.VectorLen(o))]


def _read_file(tab: Table) -> dict[str, Any]:
    return {"name": _string(tab, _ASSOCIATED_FILE["name"]), "type": _scalar(tab, _ASSOCIATED_FILE["type"], N.Int8Flags)}


def _read_tensor(tab: Table) -> dict[str, Any]:
    out: dict[str, Any] = {"name": _string(tab, _TENSOR["name"]), "description": _string(tab, _TENSOR["description"]),
                           "associated_files": [_read_file(f) for f in _children(tab, _TENSOR["associated_files"])]}
    content = _child(tab, _TENSOR["content"])
    if content is not None:
        kind = _scalar(content, _CONTENT["properties_type"], N.Uint8Flags)
        props = _child(content, _CONTENT["properties"])
        if kind == AUDIO_PROPERTIES and props is not None:
            out["audio_properties"] = {k: _scalar(props, slot, N.Uint32Flags) for k, slot in _AUDIO_PROPERTIES.items()}
    stats = _child(tab, _TENSOR["stats"])
    if stats is not None:
        out["stats"] = {k: _float_vector(stats, slot) for k, slot in _STATS.items()}
    units = []
    for unit in _children(tab, _TENSOR["process_units"]):
        kind = _scalar(unit, _PROCESS_UNIT["options_type"], N.Uint8Flags)
        options = _child(unit, _PROCESS_UNIT["options"])
        if kind == SCORE_CALIBRATION_OPTIONS and options is not None:
            transform = _scalar(options, _SCORE_CALIBRATION["score_transformation"], N.Int8Flags)
            units.append({"score_calibration": {
                "score_transformation": {v: k for k, v in SCORE_TRANSFORMATIONS.items()}[transform],
                "default_score": _scalar(options, _SCORE_CALIBRATION["default_score"], N.Float32Flags, 0.0)}})
        else:
            units.append({"options_type": kind})
    out["process_units"] = units
    return out


def parse_metadata(buffer: bytes) -> dict[str, Any]:
    """A ModelMetadata FlatBuffer as a dict (the fields this module writes)."""
    if len(buffer) < 8 or bytes(buffer[4:8]) != FILE_IDENTIFIER:
        raise ValueError("not a TFLite metadata buffer (file identifier M001 missing)")
    root = Table(bytearray(buffer), flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buffer, 0))
    out: dict[str, Any] = {k: _string(root, slot) for k, slot in _MODEL.items() if k != "subgraphs"}
    out["subgraphs"] = [{"name": _string(g, _SUBGRAPH["name"]),
                         "inputs": [_read_tensor(t) for t in _children(g, _SUBGRAPH["inputs"])],
                         "outputs": [_read_tensor(t) for t in _children(g, _SUBGRAPH["outputs"])]}
                        for g in _children(root, _MODEL["subgraphs"])]
    return out


def read(model: bytes) -> dict[str, Any]:
    """The metadata of a TFLite model: the parsed ModelMetadata, the zipped files, and the labels."""
    from keras_mgc.export.tflite import _schema

    tflite = _schema().Model.GetRootAsModel(model, 0)
    buffer = None
    for i in range(tflite.MetadataLength()):
        entry = tflite.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            buffer = tflite.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    if buffer is None:
        raise ValueError(f"the model has no {METADATA_NAME} metadata")
    out = parse_metadata(buffer)
    files: dict[str, bytes] = {}
    if zipfile.is_zipfile(io.BytesIO(model)):
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    out["files"] = files
    labels_file = next((f["name"] for t in out["subgraphs"][0]["outputs"] for f in t["associated_files"]
                        if f["type"] == TENSOR_AXIS_LABELS), None) if out["subgraphs"] else None
    out["labels"] = files[labels_file].decode().splitlines() if labels_file in files else None
    return out
