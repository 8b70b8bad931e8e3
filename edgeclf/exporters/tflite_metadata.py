"""Write and read TFLite Metadata, the format the TFLite Task Library and MediaPipe read.

tflite-support is the reference implementation, but it pins protobuf<4, which breaks
TensorFlow 2.21. Its schema is public, so the metadata flatbuffer is built and read with
Python that flatc generated from it (`tflite_metadata_schema`, see PROVENANCE.md there);
the model itself is rewritten with the generated TFLite schema that LiteRT ships.

Layout, following tflite-support's `metadata_schema.fbs` (file identifier "M001"):

* the metadata is a `ModelMetadata` flatbuffer stored in one of the model's buffers and
  named by a `Model.metadata` entry called "TFLITE_METADATA";
* associated files (here: labels.txt) travel as a zip archive appended to the .tflite
  bytes; TFLite ignores trailing bytes and zip readers find the archive from its end.
"""
from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any

import flatbuffers

from edgeclf.errors import ExportError
from edgeclf.exporters import tflite_flatbuffer
from edgeclf.exporters.tflite_metadata_schema import metadata_schema_generated as fb

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE_NAME = "labels.txt"
# What GetMinimumMetadataParserVersion() in tflite-support returns for metadata that uses
# no member added after schema 1.0.0 (no VOCABULARY files, tokenizers, subgraph process
# units, tensor groups or audio). embed_metadata() writes only 1.0.0 members.
MIN_PARSER_VERSION = "1.0.0"

_METADATA_IDENTIFIER = b"M001"
# zipfile never inflates a member past its declared size, so this bounds memory use.
_MAX_ASSOCIATED_FILE = 256 * 1024 * 1024


def _enum_names(enum: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


_FILE_TYPES = _enum_names(fb.AssociatedFileType)
_COLOR_SPACES = _enum_names(fb.ColorSpaceType)
_CONTENT_TYPES = _enum_names(fb.ContentProperties)
del _CONTENT_TYPES[fb.ContentProperties.NONE]  # no content properties reads as None


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


def _new(cls: type, **fields: Any) -> Any:
    """A generated object-API object with `fields` set; a misspelt field fails loudly."""
    obj = cls()
    for name, value in fields.items():
        if not hasattr(obj, name):
            raise AttributeError(f"{cls.__name__} has no field {name!r}")
        setattr(obj, name, value)
    return obj


def _build_metadata(meta: ImageClassifierMetadata) -> bytes:
    """Serialize a ModelMetadata flatbuffer ("M001") for an image classifier."""
    # Output: class probabilities, labelled by labels.txt.
    labels_file = _new(fb.AssociatedFileT, name=LABELS_FILE_NAME, type=fb.AssociatedFileType.TENSOR_AXIS_LABELS,
                       description="Labels for the categories the model can recognize.")
    output = _new(
        fb.TensorMetadataT,
        name="probability",
        description=f"Probabilities of the {len(meta.labels)} labels respectively.",
        content=_new(fb.ContentT, contentPropertiesType=fb.ContentProperties.FeatureProperties,
                     contentProperties=fb.FeaturePropertiesT()),
        stats=_new(fb.StatsT, max=[1.0], min=[0.0]),
        associatedFiles=[labels_file],
    )

    # Input: an RGB image, normalized out of graph by (x - mean) / std.
    image = _new(fb.ImagePropertiesT, colorSpace=fb.ColorSpaceType.RGB,
                 defaultSize=_new(fb.ImageSizeT, width=meta.width, height=meta.height))
    options = _new(fb.NormalizationOptionsT, mean=[float(v) for v in meta.input_mean],
                   std=[float(v) for v in meta.input_std])
    normalization = _new(fb.ProcessUnitT, optionsType=fb.ProcessUnitOptions.NormalizationOptions, options=options)
    input_ = _new(
        fb.TensorMetadataT,
        name="image",
        description=f"Input image to be classified: {meta.width}x{meta.height} RGB, "
        f"values in [{meta.input_min:g}, {meta.input_max:g}].",
        content=_new(fb.ContentT, contentPropertiesType=fb.ContentProperties.ImageProperties, contentProperties=image),
        processUnits=[normalization],
        stats=_new(fb.StatsT, max=[float(meta.input_max)], min=[float(meta.input_min)]),
    )

    root = _new(
        fb.ModelMetadataT,
        name=meta.name,
        description=meta.description,
        version=meta.version,
        subgraphMetadata=[_new(fb.SubGraphMetadataT, inputTensorMetadata=[input_], outputTensorMetadata=[output])],
        author=meta.author,
        license=meta.license,
        minParserVersion=MIN_PARSER_VERSION,
    )
    builder = flatbuffers.Builder(1024)
    builder.Finish(root.Pack(builder), file_identifier=_METADATA_IDENTIFIER)
    return bytes(builder.Output())


# =========================================================================================
# Reading: any .tflite, including foreign and corrupt ones
# =========================================================================================
# Generated flatbuffer code does no bounds checks: bad offsets surface as struct.error,
# IndexError, ValueError (numpy) and the like. Every read of model bytes below therefore
# sits in one `except Exception`, which turns them into "no metadata" or an "error" key.


def _metadata_buffer(model: bytes) -> bytes | None:
    """The bytes of the buffer that Model.metadata["TFLITE_METADATA"] points at, if any."""
    if len(model) < 8 or model[4:8] != tflite_flatbuffer.MODEL_IDENTIFIER:
        return None
    schema = tflite_flatbuffer.schema()
    try:
        root = schema.Model.GetRootAs(model, 0)
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            if _decode(entry.Name()) != METADATA_NAME:
                continue
            index = entry.Buffer()
            if not 0 < index < root.BuffersLength():
                return None
            buffer = root.Buffers(index)
            if not buffer.DataIsNone():
                return buffer.DataAsNumpy().tobytes()
            # Large models keep the bytes outside the flatbuffer.
            offset, size = buffer.Offset(), buffer.Size()
            return bytes(model[offset : offset + size]) if offset > 1 and offset + size <= len(model) else None
    except Exception:  # a corrupt model: see above
        return None
    return None


def read_metadata(model_bytes: bytes) -> dict | None:
    """Read the TFLite Metadata of any .tflite model into a plain dict.

    Returns None when the model has no TFLITE_METADATA entry in the M001 format (or is not
    a TFLite model at all). Keys: name, description, version, author, license,
    min_parser_version, associated_files (model level), inputs, outputs. Each tensor entry
    has name, description, content_type, color_space, width, height, mean, std, min, max
    and associated_files ([{name, type}]); fields the model does not set are None (lists
    are empty). Malformed metadata gives those keys empty plus an "error" key saying why.
    """
    buf = model_bytes if isinstance(model_bytes, (bytes, bytearray)) else bytes(model_bytes)
    metadata = _metadata_buffer(buf)
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
        info.update(_model_info(fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(metadata, 0))))
    except Exception as exc:  # corrupt metadata: see above
        info["error"] = f"malformed metadata: {exc}"
    return info


def _model_info(root: Any) -> dict:
    # TFLite models have one subgraph, which is what metadata describes.
    graph = root.subgraphMetadata[0] if root.subgraphMetadata else None
    return {
        "name": _text(root.name),
        "description": _text(root.description),
        "version": _text(root.version),
        "author": _text(root.author),
        "license": _text(root.license),
        "min_parser_version": _text(root.minParserVersion),
        "associated_files": _files(root.associatedFiles),
        "inputs": [_tensor_info(t) for t in (graph.inputTensorMetadata or [])] if graph else [],
        "outputs": [_tensor_info(t) for t in (graph.outputTensorMetadata or [])] if graph else [],
    }


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _files(files: list | None) -> list[dict]:
    return [{"name": _text(f.name), "type": _FILE_TYPES.get(f.type, "UNKNOWN")} for f in files or []]


def _tensor_info(tensor: Any) -> dict:
    info: dict[str, Any] = {
        "name": _text(tensor.name),
        "description": _text(tensor.description),
        "content_type": None,
        "color_space": None,
        "width": None,
        "height": None,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "associated_files": _files(tensor.associatedFiles),
    }
    content = tensor.content
    if content is not None:
        info["content_type"] = _CONTENT_TYPES.get(content.contentPropertiesType)
        props = content.contentProperties
        if isinstance(props, fb.ImagePropertiesT):
            info["color_space"] = _COLOR_SPACES.get(props.colorSpace, "UNKNOWN")
            if props.defaultSize is not None:
                info["width"], info["height"] = props.defaultSize.width, props.defaultSize.height
    for unit in tensor.processUnits or []:
        if unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions:
            if unit.options is not None:
                info["mean"], info["std"] = _floats(unit.options.mean), _floats(unit.options.std)
            break  # the Task Library uses the first NormalizationOptions too
    if tensor.stats is not None:
        info["min"], info["max"] = _floats(tensor.stats.min), _floats(tensor.stats.max)
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
