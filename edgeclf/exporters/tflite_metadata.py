"""Write and read TFLite Metadata, the format the TFLite Task Library and MediaPipe read.

tflite-support is the reference implementation, but it pins protobuf<4, which breaks
TensorFlow 2.21, so this module does the same job itself: the metadata flatbuffer is built
with `flatbuffers.Builder` and read by hand; only re-serializing the model itself uses the
generated TFLite schema (object API) that LiteRT and TensorFlow ship.

Layout, following tflite-support's `metadata_schema.fbs` (file identifier "M001"):

* the metadata is a `ModelMetadata` flatbuffer stored in one of the model's buffers and
  named by a `Model.metadata` entry called "TFLITE_METADATA";
* associated files (here: labels.txt) travel as a zip archive appended to the .tflite
  bytes; TFLite ignores trailing bytes and zip readers find the archive from its end.

Field ids below are the declaration order of each table in the schema; union type ids are
the 1-based position of the member in the `union` declaration (0 is NONE).
"""
from __future__ import annotations

import io
import math
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import flatbuffers

from edgeclf.errors import ExportError
from edgeclf.exporters import tflite_flatbuffer

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE_NAME = "labels.txt"
# What GetMinimumMetadataParserVersion() in tflite-support returns for metadata that uses
# no member added after schema 1.0.0 (no VOCABULARY files, tokenizers, subgraph process
# units, tensor groups or audio). embed_metadata() writes only 1.0.0 members.
MIN_PARSER_VERSION = "1.0.0"

_MODEL_IDENTIFIER = b"TFL3"
_METADATA_IDENTIFIER = b"M001"
# zipfile never inflates a member past its declared size, so this bounds memory use.
_MAX_ASSOCIATED_FILE = 256 * 1024 * 1024

# --- schema constants (metadata_schema.fbs) ---------------------------------------------
_ASSOCIATED_FILE_TYPES = {
    0: "UNKNOWN",
    1: "DESCRIPTIONS",
    2: "TENSOR_AXIS_LABELS",
    3: "TENSOR_VALUE_LABELS",
    4: "TENSOR_AXIS_SCORE_CALIBRATION",
    5: "VOCABULARY",
    6: "SCANN_INDEX_FILE",
}
_TENSOR_AXIS_LABELS = 2
_COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
_RGB = 1
_CONTENT_PROPERTIES = {
    1: "FeatureProperties",
    2: "ImageProperties",
    3: "BoundingBoxProperties",
    4: "AudioProperties",
}
_FEATURE_PROPERTIES = 1
_IMAGE_PROPERTIES = 2
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union

# Table field ids.
_MM_NAME, _MM_DESCRIPTION, _MM_VERSION, _MM_SUBGRAPHS = 0, 1, 2, 3
_MM_AUTHOR, _MM_LICENSE, _MM_FILES, _MM_MIN_PARSER = 4, 5, 6, 7
_SG_NAME, _SG_DESCRIPTION, _SG_INPUTS, _SG_OUTPUTS = 0, 1, 2, 3
_TM_NAME, _TM_DESCRIPTION, _TM_DIM_NAMES, _TM_CONTENT = 0, 1, 2, 3
_TM_PROCESS_UNITS, _TM_STATS, _TM_FILES = 4, 5, 6
_CONTENT_TYPE, _CONTENT_PROPS = 0, 1
_IMG_COLOR_SPACE, _IMG_SIZE = 0, 1
_SIZE_WIDTH, _SIZE_HEIGHT = 0, 1
_PU_TYPE, _PU_OPTIONS = 0, 1
_NORM_MEAN, _NORM_STD = 0, 1
_STATS_MAX, _STATS_MIN = 0, 1
_AF_NAME, _AF_DESCRIPTION, _AF_TYPE = 0, 1, 2

# TFLite model schema (tensorflow/lite/schema/schema.fbs), only what we read by hand.
_MODEL_SUBGRAPHS, _MODEL_BUFFERS, _MODEL_METADATA = 2, 4, 6
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_META_NAME, _META_BUFFER = 0, 1


@dataclass(frozen=True)
class ImageClassifierMetadata:
    """What embed_metadata() writes for a single-input, single-output image classifier."""

    name: str
    description: str
    version: str  # edgeclf version string
    author: str
    license: str
    labels: list[str]
    width: int
    height: int
    # NormalizationOptions: our models normalize inside the graph and take raw RGB 0..255,
    # so callers pass mean [0, 0, 0] and std [1, 1, 1].
    input_mean: list[float]
    input_std: list[float]
    input_min: float = 0.0  # Stats of the input tensor
    input_max: float = 255.0


# =========================================================================================
# Writing
# =========================================================================================


def embed_metadata(model_bytes: bytes, meta: ImageClassifierMetadata) -> bytes:
    """Return new .tflite bytes carrying `meta` as TFLite Metadata plus a labels.txt file.

    The input tensor is described as an RGB image with NormalizationOptions (mean/std) and
    Stats (min/max); the output tensor as FeatureProperties with Stats 0..1 and labels.txt
    attached as TENSOR_AXIS_LABELS. An existing TFLITE_METADATA entry is replaced, and any
    zip archive already appended to the model is dropped (its files belonged to the old
    metadata). Raises ModelError for bytes that are not a TFLite model and ExportError when
    `meta` does not fit the model.
    """
    schema = tflite_flatbuffer.schema()
    model = tflite_flatbuffer.unpack(bytes(model_bytes))
    _validate(meta, model)
    _set_metadata_buffer(schema, model, _build_metadata(meta))
    tflite = tflite_flatbuffer.pack(model, what="carry TFLite metadata")
    return _append_zip(tflite, {LABELS_FILE_NAME: _labels_file(meta.labels)})


def _validate(meta: ImageClassifierMetadata, model) -> None:
    def bad(what: str, fix: str) -> ExportError:
        return ExportError(f"cannot write TFLite metadata: {what}", fix)

    if not meta.labels:
        raise bad("no labels", "pass the class names")
    for label in meta.labels:
        if not label or "\n" in label or "\r" in label:
            raise bad(f"label {label!r} is empty or has a line break", "rename the class")
    if meta.width <= 0 or meta.height <= 0:
        raise bad(f"image size {meta.width}x{meta.height}", "use a positive width and height")
    for field, values in (("input_mean", meta.input_mean), ("input_std", meta.input_std)):
        if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
            raise bad(f"{field} must be 1 or 3 finite numbers, got {values!r}", "fix the values")
    if any(v == 0 for v in meta.input_std):
        raise bad("input_std contains 0", "use a non-zero standard deviation")
    if not (math.isfinite(meta.input_min) and math.isfinite(meta.input_max)):
        raise bad("input_min/input_max must be finite", "fix the values")

    if not model.subgraphs:
        raise bad("the model has no subgraph", "re-export the model")
    graph = model.subgraphs[0]
    inputs = list(graph.inputs if graph.inputs is not None else [])
    outputs = list(graph.outputs if graph.outputs is not None else [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise bad(
            f"expected 1 input and 1 output tensor, the model has {len(inputs)} and {len(outputs)}",
            "embed metadata only into single-image classifiers",
        )
    tensors = list(graph.tensors or [])
    if not all(0 <= int(i) < len(tensors) for i in inputs + outputs):
        raise bad("the model's input/output tensor indices are out of range", "re-export the model")
    in_shape = _shape(tensors[inputs[0]])
    if len(in_shape) == 4 and min(in_shape[1:]) > 0 and (
        tuple(in_shape[1:]) != (meta.height, meta.width, 3)
    ):
        raise bad(
            f"input tensor is {in_shape[1]}x{in_shape[2]}x{in_shape[3]} (HxWxC), "
            f"metadata says {meta.height}x{meta.width}x3",
            "pass the model's input size",
        )
    out_shape = _shape(tensors[outputs[0]])
    if out_shape and out_shape[-1] > 0 and out_shape[-1] != len(meta.labels):
        raise bad(
            f"the model has {out_shape[-1]} outputs but {len(meta.labels)} labels",
            "pass one label per class, in output order",
        )


def _shape(tensor) -> list[int]:
    return [int(d) for d in (tensor.shape if tensor.shape is not None else [])]


def _set_metadata_buffer(schema, model, metadata_buf: bytes) -> None:
    """Point the TFLITE_METADATA entry at a buffer holding `metadata_buf` (replace or add)."""
    buffer = tflite_flatbuffer.aligned_buffer(metadata_buf)
    model.metadata = list(model.metadata or [])
    for entry in model.metadata:
        if _decode(entry.name) == METADATA_NAME:
            index = entry.buffer
            if 0 < index < len(model.buffers):
                model.buffers[index] = buffer
            else:  # a dangling index from some other tool: give it a fresh buffer
                model.buffers.append(buffer)
                entry.buffer = len(model.buffers) - 1
            # Drop duplicates so readers cannot pick a stale copy.
            model.metadata = [
                m for m in model.metadata if m is entry or _decode(m.name) != METADATA_NAME
            ]
            return
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)


def _decode(name: Any) -> str:
    if isinstance(name, (bytes, bytearray)):
        return name.decode("utf-8", "replace")
    return name or ""


def _labels_file(labels: list[str]) -> bytes:
    # A trailing newline is what label files conventionally have; Task Library/MediaPipe skip it.
    return ("\n".join(labels) + "\n").encode("utf-8")


def _append_zip(model: bytes, files: dict[str, bytes]) -> bytes:
    """Append `files` as a zip archive after the flatbuffer, like tflite-support does."""
    out = io.BytesIO()
    out.write(model)
    # Mode "a" on non-zip content appends a fresh archive after it.
    with zipfile.ZipFile(out, "a") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


class _MetadataBuilder:
    """Thin helpers over flatbuffers.Builder: children first, then the table that holds them."""

    def __init__(self) -> None:
        self.b = flatbuffers.Builder(1024)

    def string(self, text: str | None) -> int | None:
        return None if text is None else self.b.CreateString(text)

    def offsets(self, items: list[int]) -> int:
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector()

    def floats(self, values: list[float]) -> int:
        self.b.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.b.PrependFloat32(float(value))
        return self.b.EndVector()

    def table(self, num_fields: int, *fields: tuple[str, int, int | None]) -> int:
        """A table from (kind, field id, value) triples; a None value leaves the field unset."""
        self.b.StartObject(num_fields)
        for kind, slot, value in fields:
            if value is None:
                continue
            if kind == "offset":
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "u8":
                self.b.PrependUint8Slot(slot, value, 0)
            elif kind == "i8":
                self.b.PrependInt8Slot(slot, value, 0)
            elif kind == "u32":
                self.b.PrependUint32Slot(slot, value, 0)
            else:
                raise ValueError(f"unknown field kind {kind}")
        return self.b.EndObject()


def _build_metadata(meta: ImageClassifierMetadata) -> bytes:
    """Serialize a ModelMetadata flatbuffer ("M001") for an image classifier."""
    m = _MetadataBuilder()
    n = len(meta.labels)

    # Output: class probabilities, labelled by labels.txt.
    labels = m.table(
        4,
        ("offset", _AF_NAME, m.string(LABELS_FILE_NAME)),
        ("offset", _AF_DESCRIPTION, m.string("Labels for the categories the model can recognize.")),
        ("i8", _AF_TYPE, _TENSOR_AXIS_LABELS),
    )
    out_files = m.offsets([labels])
    feature = m.table(0)
    out_content = m.table(
        3,
        ("u8", _CONTENT_TYPE, _FEATURE_PROPERTIES),
        ("offset", _CONTENT_PROPS, feature),
    )
    out_stats = m.table(
        2, ("offset", _STATS_MAX, m.floats([1.0])), ("offset", _STATS_MIN, m.floats([0.0]))
    )
    output = m.table(
        7,
        ("offset", _TM_NAME, m.string("probability")),
        ("offset", _TM_DESCRIPTION, m.string(f"Probabilities of the {n} labels respectively.")),
        ("offset", _TM_CONTENT, out_content),
        ("offset", _TM_STATS, out_stats),
        ("offset", _TM_FILES, out_files),
    )

    # Input: an RGB image, normalized out of graph by (x - mean) / std.
    size = m.table(2, ("u32", _SIZE_WIDTH, meta.width), ("u32", _SIZE_HEIGHT, meta.height))
    image = m.table(2, ("i8", _IMG_COLOR_SPACE, _RGB), ("offset", _IMG_SIZE, size))
    in_content = m.table(
        3, ("u8", _CONTENT_TYPE, _IMAGE_PROPERTIES), ("offset", _CONTENT_PROPS, image)
    )
    norm = m.table(
        2,
        ("offset", _NORM_MEAN, m.floats(meta.input_mean)),
        ("offset", _NORM_STD, m.floats(meta.input_std)),
    )
    unit = m.table(2, ("u8", _PU_TYPE, _NORMALIZATION_OPTIONS), ("offset", _PU_OPTIONS, norm))
    in_units = m.offsets([unit])
    in_stats = m.table(
        2,
        ("offset", _STATS_MAX, m.floats([meta.input_max])),
        ("offset", _STATS_MIN, m.floats([meta.input_min])),
    )
    in_desc = (
        f"Input image to be classified: {meta.width}x{meta.height} RGB, "
        f"values in [{meta.input_min:g}, {meta.input_max:g}]."
    )
    input_ = m.table(
        7,
        ("offset", _TM_NAME, m.string("image")),
        ("offset", _TM_DESCRIPTION, m.string(in_desc)),
        ("offset", _TM_CONTENT, in_content),
        ("offset", _TM_PROCESS_UNITS, in_units),
        ("offset", _TM_STATS, in_stats),
    )

    subgraph = m.table(
        4,
        ("offset", _SG_INPUTS, m.offsets([input_])),
        ("offset", _SG_OUTPUTS, m.offsets([output])),
    )
    root = m.table(
        8,
        ("offset", _MM_NAME, m.string(meta.name)),
        ("offset", _MM_DESCRIPTION, m.string(meta.description)),
        ("offset", _MM_VERSION, m.string(meta.version)),
        ("offset", _MM_SUBGRAPHS, m.offsets([subgraph])),
        ("offset", _MM_AUTHOR, m.string(meta.author)),
        ("offset", _MM_LICENSE, m.string(meta.license)),
        ("offset", _MM_MIN_PARSER, m.string(MIN_PARSER_VERSION)),
    )
    m.b.Finish(root, file_identifier=_METADATA_IDENTIFIER)
    return bytes(m.b.Output())


# =========================================================================================
# Reading (no generated code: bounds-checked by hand so foreign models cannot crash us)
# =========================================================================================


class _Malformed(Exception):
    """A flatbuffer offset or length points outside the buffer."""


class _Table:
    """Read-only view of one flatbuffer table at `pos` in `buf`."""

    __slots__ = ("buf", "pos", "vtable", "vtable_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.vtable = pos - _unpack(buf, "<i", pos)
        self.vtable_len = _unpack(buf, "<H", self.vtable)

    def _field(self, field_id: int) -> int:
        """Absolute position of the field, or 0 when it is absent."""
        slot = 4 + 2 * field_id
        if slot + 2 > self.vtable_len:
            return 0
        rel = _unpack(self.buf, "<H", self.vtable + slot)
        return self.pos + rel if rel else 0

    def _deref(self, pos: int) -> int:
        return pos + _unpack(self.buf, "<I", pos)

    def scalar(self, field_id: int, fmt: str, default: Any) -> Any:
        pos = self._field(field_id)
        return _unpack(self.buf, fmt, pos) if pos else default

    def _vector(self, field_id: int, elem_size: int) -> tuple[int, int] | None:
        pos = self._field(field_id)
        if not pos:
            return None
        start = self._deref(pos)
        count = _unpack(self.buf, "<I", start)
        if start + 4 + count * elem_size > len(self.buf):
            raise _Malformed("vector runs past the end of the buffer")
        return start + 4, count

    def bytes_(self, field_id: int) -> bytes | None:
        vec = self._vector(field_id, 1)
        return None if vec is None else bytes(self.buf[vec[0] : vec[0] + vec[1]])

    def string(self, field_id: int) -> str | None:
        raw = self.bytes_(field_id)
        return None if raw is None else raw.decode("utf-8", "replace")

    def floats(self, field_id: int) -> list[float] | None:
        vec = self._vector(field_id, 4)
        if vec is None:
            return None
        return list(struct.unpack_from(f"<{vec[1]}f", self.buf, vec[0]))

    def table(self, field_id: int) -> _Table | None:
        pos = self._field(field_id)
        return _Table(self.buf, self._deref(pos)) if pos else None

    def tables(self, field_id: int) -> list[_Table]:
        vec = self._vector(field_id, 4)
        if vec is None:
            return []
        start, count = vec
        return [_Table(self.buf, self._deref(start + 4 * i)) for i in range(count)]


def _unpack(buf: bytes, fmt: str, pos: int) -> Any:
    # Negative positions would silently index from the end in Python: reject them.
    if pos < 0 or pos + struct.calcsize(fmt) > len(buf):
        raise _Malformed(f"offset {pos} outside the buffer")
    return struct.unpack_from(fmt, buf, pos)[0]


def _root(buf: bytes) -> _Table:
    return _Table(buf, _unpack(buf, "<I", 0))


def _metadata_buffer(model: bytes) -> bytes | None:
    """The bytes of the buffer that Model.metadata["TFLITE_METADATA"] points at, if any."""
    root = _root(model)
    for entry in root.tables(_MODEL_METADATA):
        if entry.string(_META_NAME) != METADATA_NAME:
            continue
        index = entry.scalar(_META_BUFFER, "<I", 0)
        buffers = root.tables(_MODEL_BUFFERS)
        if not 0 < index < len(buffers):
            return None
        buffer = buffers[index]
        data = buffer.bytes_(_BUFFER_DATA)
        if data is None:  # large models keep the bytes outside the flatbuffer
            offset = buffer.scalar(_BUFFER_OFFSET, "<Q", 0)
            size = buffer.scalar(_BUFFER_SIZE, "<Q", 0)
            if offset > 1 and offset + size <= len(model):
                data = bytes(model[offset : offset + size])
        return data
    return None


def read_metadata(model_bytes: bytes) -> dict | None:
    """Read the TFLite Metadata of any .tflite model into a plain dict.

    Returns None when the model has no TFLITE_METADATA entry in the M001 format (or is not
    a TFLite model at all). Keys: name, description, version, author, license,
    min_parser_version, associated_files (model level), inputs, outputs. Each tensor entry
    has name, description, content_type, color_space, width, height, mean, std, min, max
    and associated_files ([{name, type}]); fields the model does not set are None (lists
    are empty). If the metadata turns out malformed part way, the fields read so far are
    returned with an "error" key.
    """
    buf = model_bytes if isinstance(model_bytes, (bytes, bytearray)) else bytes(model_bytes)
    if len(buf) < 8 or buf[4:8] != _MODEL_IDENTIFIER:
        return None
    try:
        metadata = _metadata_buffer(buf)
    except _Malformed:
        return None
    if metadata is None or len(metadata) < 8 or metadata[4:8] != _METADATA_IDENTIFIER:
        return None

    info: dict[str, Any] = {
        "name": None,
        "description": None,
        "version": None,
        "author": None,
        "license": None,
        "min_parser_version": None,
        "associated_files": [],
        "inputs": [],
        "outputs": [],
    }
    try:
        root = _root(metadata)
        info["name"] = root.string(_MM_NAME)
        info["description"] = root.string(_MM_DESCRIPTION)
        info["version"] = root.string(_MM_VERSION)
        info["author"] = root.string(_MM_AUTHOR)
        info["license"] = root.string(_MM_LICENSE)
        info["min_parser_version"] = root.string(_MM_MIN_PARSER)
        info["associated_files"] = _files(root, _MM_FILES)
        subgraphs = root.tables(_MM_SUBGRAPHS)
        if subgraphs:  # TFLite models have one subgraph that metadata describes
            for tensor in subgraphs[0].tables(_SG_INPUTS):
                info["inputs"].append(_tensor_info(tensor))
            for tensor in subgraphs[0].tables(_SG_OUTPUTS):
                info["outputs"].append(_tensor_info(tensor))
    except (_Malformed, struct.error) as exc:
        info["error"] = f"malformed metadata: {exc}"
    return info


def _files(table: _Table, field_id: int) -> list[dict]:
    return [
        {
            "name": f.string(_AF_NAME),
            "type": _ASSOCIATED_FILE_TYPES.get(f.scalar(_AF_TYPE, "<b", 0), "UNKNOWN"),
        }
        for f in table.tables(field_id)
    ]


def _tensor_info(tensor: _Table) -> dict:
    info: dict[str, Any] = {
        "name": tensor.string(_TM_NAME),
        "description": tensor.string(_TM_DESCRIPTION),
        "content_type": None,
        "color_space": None,
        "width": None,
        "height": None,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "associated_files": _files(tensor, _TM_FILES),
    }
    content = tensor.table(_TM_CONTENT)
    if content is not None:
        kind = content.scalar(_CONTENT_TYPE, "<B", 0)
        info["content_type"] = _CONTENT_PROPERTIES.get(kind)
        props = content.table(_CONTENT_PROPS)
        if kind == _IMAGE_PROPERTIES and props is not None:
            info["color_space"] = _COLOR_SPACES.get(props.scalar(_IMG_COLOR_SPACE, "<b", 0), "UNKNOWN")
            size = props.table(_IMG_SIZE)
            if size is not None:
                info["width"] = size.scalar(_SIZE_WIDTH, "<I", 0)
                info["height"] = size.scalar(_SIZE_HEIGHT, "<I", 0)
    for unit in tensor.tables(_TM_PROCESS_UNITS):
        if unit.scalar(_PU_TYPE, "<B", 0) == _NORMALIZATION_OPTIONS:
            options = unit.table(_PU_OPTIONS)
            if options is not None:
                info["mean"] = options.floats(_NORM_MEAN)
                info["std"] = options.floats(_NORM_STD)
            break  # the Task Library uses the first NormalizationOptions too
    stats = tensor.table(_TM_STATS)
    if stats is not None:
        info["min"] = stats.floats(_STATS_MIN)
        info["max"] = stats.floats(_STATS_MAX)
    return info


def read_associated_files(model_bytes: bytes) -> dict[str, bytes]:
    """Files in the zip archive appended to the model ({} when there is none or it is unreadable).

    Members that cannot be read (encrypted, corrupt, unknown compression) or that claim more
    than 256 MiB are left out.
    """
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            for item in zf.infolist():
                if item.is_dir() or item.file_size > _MAX_ASSOCIATED_FILE:
                    continue
                try:
                    files[item.filename] = zf.read(item)
                except Exception:  # zipfile, zlib, bz2 and lzma each raise their own errors
                    continue
    except Exception:  # any archive we cannot parse counts as no archive
        return {}
    return files
