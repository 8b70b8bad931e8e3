"""Reading and rewriting .tflite flatbuffers with the generated schema that LiteRT ships.

Used by the TFLite exporter (exact input quantization, coverage checks), the metadata
writer, and `edgeclf inspect` on any .tflite, including ones edgeclf did not make.
"""
from __future__ import annotations

import functools
import importlib
import struct
from collections import Counter
from functools import lru_cache

import flatbuffers
import numpy as np

from edgeclf.errors import ExportError, ModelError

MODEL_IDENTIFIER = b"TFL3"
# TFLite's converter aligns constant data to 16 bytes; keep that when re-serializing.
BUFFER_ALIGNMENT = 16
_NUMPY_TYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT8": "int8", "UINT8": "uint8", "INT16": "int16",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


@lru_cache(maxsize=1)
def schema():
    """The generated TFLite schema module (object API) shipped with LiteRT or TensorFlow."""
    try:
        # LiteRT's copy is the newer schema and imports in milliseconds, unlike TensorFlow.
        return importlib.import_module("ai_edge_litert.schema_py_generated")
    except ImportError:
        return importlib.import_module("tensorflow.lite.python.schema_py_generated")


@lru_cache(maxsize=1)
def _enum_names() -> tuple[dict[int, str], dict[int, str]]:
    s = schema()
    ops = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    return ops, types


def check_identifier(buf: bytes) -> None:
    if len(buf) < 8 or buf[4:8] != MODEL_IDENTIFIER:
        raise ModelError("not a TFLite model (no TFL3 file identifier)", "pass a .tflite file")


def unpack(buf: bytes):
    """The whole model as mutable objects (ModelT)."""
    check_identifier(buf)
    s = schema()
    try:
        model = s.ModelT.InitFromObj(s.Model.GetRootAs(buf, 0))
    except Exception as exc:  # generated code raises bare struct/index errors on bad input
        raise ModelError(f"cannot parse the TFLite model: {exc}", "re-export the model") from exc
    # Models over 2 GB keep buffer data after the flatbuffer (offset/size); pull it in so
    # Pack() writes it inline, as TensorFlow's flatbuffer_utils does.
    for buffer in model.buffers or []:
        if buffer.offset and buffer.offset > 1:
            buffer.data = bytes(buf[buffer.offset : buffer.offset + buffer.size])
            buffer.offset = 0
            buffer.size = 0
    model.buffers = [aligned_buffer(b.data, b.offset, b.size) for b in (model.buffers or [])]
    return model


def pack(model, what: str = "be rewritten") -> bytes:
    size = sum(len(b.data) for b in model.buffers if b.data is not None)
    builder = flatbuffers.Builder(max(1024, size + (1 << 16)))
    try:
        builder.Finish(model.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    except flatbuffers.builder.BuilderSizeError as exc:  # flatbuffers stop at 2 GB
        raise ExportError(f"the model is too large to {what}", "use a smaller model or input size") from exc
    return bytes(builder.Output())


@lru_cache(maxsize=1)
def _aligned_buffer_class():
    s = schema()

    class AlignedBufferT(s.BufferT):
        def Pack(self, builder):
            data = None
            if self.data is not None:
                raw = self.data.tobytes() if hasattr(self.data, "tobytes") else bytes(self.data)
                # Pad so that the bytes start on a 16-byte boundary once the vector is
                # written; CreateByteVector's own 4-byte Prep then adds nothing.
                builder.Prep(BUFFER_ALIGNMENT, len(raw))
                data = builder.CreateByteVector(raw)
            s.BufferStart(builder)
            if data is not None:
                s.BufferAddData(builder, data)
            s.BufferAddOffset(builder, self.offset)
            s.BufferAddSize(builder, self.size)
            return s.BufferEnd(builder)

    return AlignedBufferT


def aligned_buffer(data, offset: int = 0, size: int = 0):
    """A BufferT whose data is written 16-byte aligned (Pack() alone aligns to 1)."""
    out = _aligned_buffer_class()()
    out.data, out.offset, out.size = data, offset, size
    return out


# --------------------------------------------------------------------------------------
# Read-only views
# --------------------------------------------------------------------------------------
# The generated readers follow offsets lazily and fail wherever a corrupt one points:
# these are the errors that surface (out-of-range unpack_from, numpy views past the end,
# None for absent tables, undecodable names, negative counts).
_CORRUPT = (struct.error, IndexError, ValueError, TypeError, AttributeError, OverflowError)


def _reader(function):
    """Make a read of untrusted model bytes fail as one ModelError, never as a bare parse error."""

    @functools.wraps(function)
    def read(buf: bytes, *args, **kwargs):
        try:
            return function(buf, *args, **kwargs)
        except ModelError:
            raise
        except _CORRUPT as exc:
            raise ModelError(f"the TFLite model is corrupt ({type(exc).__name__}: {exc})",
                             "re-export it, or copy the .tflite file again") from exc

    return read


def _root(buf: bytes):
    check_identifier(buf)
    return schema().Model.GetRootAs(buf, 0)


def _tensor_info(tensor) -> dict:
    _, types = _enum_names()
    q = tensor.Quantization()
    quant = None
    if q is not None and q.ScaleLength() > 0:
        scales = q.ScaleAsNumpy()
        zero_points = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros_like(scales, dtype=np.int64)
        if len(scales) == 1:
            quant = {"scale": float(scales[0]), "zero_point": int(zero_points[0])}
        else:
            quant = {"per_channel": len(scales), "axis": int(q.QuantizedDimension())}
    type_name = types.get(tensor.Type(), str(tensor.Type()))
    return {
        "name": (tensor.Name() or b"").decode("utf-8", "replace"),
        "shape": tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else [],
        "dtype": _NUMPY_TYPES.get(type_name, type_name.lower()),
        "quantization": quant,
    }


@_reader
def io_tensors(buf: bytes) -> dict:
    graph = _root(buf).Subgraphs(0)
    return {
        "inputs": [_tensor_info(graph.Tensors(graph.Inputs(i))) for i in range(graph.InputsLength())],
        "outputs": [_tensor_info(graph.Tensors(graph.Outputs(i))) for i in range(graph.OutputsLength())],
    }


@_reader
def tensor_names(buf: bytes) -> list[str]:
    graph = _root(buf).Subgraphs(0)
    return [(graph.Tensors(i).Name() or b"").decode("utf-8", "replace") for i in range(graph.TensorsLength())]


def _ops(model):
    """(op name, operator, subgraph) for every operator of every subgraph."""
    ops, _ = _enum_names()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = ops.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
            yield name, op, graph


@_reader
def op_counts(buf: bytes) -> dict[str, int]:
    return dict(Counter(name for name, _, _ in _ops(_root(buf))).most_common())


def _is_constant(model, tensor) -> bool:
    buffer = model.Buffers(tensor.Buffer())
    return tensor.Buffer() > 0 and buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)


@_reader
def float_ops(buf: bytes) -> list[dict]:
    """Ops that compute in float: a non-constant float input or output."""
    model = _root(buf)
    _, types = _enum_names()
    found = []
    for name, op, graph in _ops(model):
        tensors = [graph.Tensors(i) for i in list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy()) if i >= 0]
        if any(types.get(t.Type()) in ("FLOAT32", "FLOAT16") and not _is_constant(model, t) for t in tensors):
            output = graph.Tensors(op.Outputs(0)).Name().decode("utf-8", "replace") if op.OutputsLength() else ""
            found.append({"op": name, "output": output})
    return found


@_reader
def quantization_coverage(buf: bytes) -> dict:
    """Fraction of ops that compute in int8/uint8, and of weight values stored as int8."""
    model = _root(buf)
    _, types = _enum_names()
    total_ops = sum(1 for _ in _ops(model))
    n_float = len(float_ops(buf))
    by_dtype: Counter = Counter()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            if _is_constant(model, tensor) and tensor.ShapeLength():
                by_dtype[types.get(tensor.Type(), "?")] += int(np.prod(tensor.ShapeAsNumpy()))
    weights = sum(by_dtype.values())
    return {
        "ops_total": total_ops,
        "ops_integer": total_ops - n_float,
        "ops_integer_fraction": round((total_ops - n_float) / total_ops, 4) if total_ops else None,
        "weight_values_by_dtype": dict(by_dtype),
        "weights_int8_fraction": round(by_dtype.get("INT8", 0) / weights, 4) if weights else None,
    }


def set_input_quantization(buf: bytes, scale: float, zero_point: int) -> bytes:
    """Rewrite the first input's quantization. Kernels read it at prepare time, so consumers follow."""
    model = unpack(buf)
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    tensor.quantization.scale = [float(scale)]
    tensor.quantization.zeroPoint = [int(zero_point)]
    return pack(model)


def set_serving_signature(buf: bytes, input_name: str, output_name: str) -> bytes:
    """Give a model converted from a frozen function what `from_keras_model` gives it: a
    'serving_default' signature naming its input and output, and the same tensor names."""
    s = schema()
    model = unpack(buf)
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = f"serving_default_{input_name}:0".encode()
    graph.tensors[graph.outputs[0]].name = b"StatefulPartitionedCall:0"
    signature = s.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.subgraphIndex = 0
    signature.inputs, signature.outputs = [], []
    for maps, name, index in ((signature.inputs, input_name, graph.inputs[0]), (signature.outputs, output_name, graph.outputs[0])):
        entry = s.TensorMapT()
        entry.name, entry.tensorIndex = name, index
        maps.append(entry)
    model.signatureDefs = [signature]
    return pack(model)
