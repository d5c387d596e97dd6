"""What a model file says about itself, checked: class names, preprocessing, calibration, model type.

A .pth checkpoint (fer_common.checkpoint) and an ONNX file (its metadata) carry the same fields; both are
checked here, without PyTorch, so that a damaged or hostile file fails in one line naming what is wrong
rather than somewhere inside drawing, softmax or the runtime.
"""

import json
from pathlib import Path
import math

from fer_common.errors import FERError

MODEL_TYPES = ("default", "advanced")
MAX_CLASS_NAME = 64         # characters: a name is drawn beside a face and is a CSV column


def check_class_names(names, path) -> None:
    """A list of distinct, non-empty, printable names that encode to UTF-8 (a lone surrogate from a Latin-1
    folder name, a control character or a newline would break drawing, CSV and JSON)."""
    if not (isinstance(names, (list, tuple)) and len(names) >= 2 and all(isinstance(n, str) and n.strip() for n in names)):
        raise FERError(f"{path}: class_names {str(names)[:100]!r} is not a list of at least 2 names")
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise FERError(f"{path}: class name {name!r} is not valid Unicode (a folder name in another "
                           "encoding?): rename it") from None
        if not name.isprintable() or len(name) > MAX_CLASS_NAME:
            raise FERError(f"{path}: class name {name[:MAX_CLASS_NAME]!r} must be printable and at most "
                           f"{MAX_CLASS_NAME} characters")
    if len(set(names)) != len(names):
        raise FERError(f"{path}: class_names {list(names)} repeats a name")


def check_preprocessing(prep, path) -> None:
    """The preprocessing dict of a checkpoint or ONNX file: input size, channels, mean and std that make sense."""
    def bad(what):
        return FERError(f"{path}: its preprocessing is damaged ({what}): re-export the model with this toolkit")

    if not isinstance(prep, dict):
        raise bad("not a dict")
    size, channels = prep.get("input_size"), prep.get("channels")
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 4096 for v in size)):
        raise bad(f"input_size {size!r} is not [H, W] between 8 and 4096")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise bad(f"channels {channels!r} is not 1 or 3")
    for key in ("mean", "std"):
        values = prep.get(key)
        if not (isinstance(values, (list, tuple)) and len(values) == channels
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise bad(f"{key} {values!r} is not {channels} number(s)")
    if any(v <= 0 for v in prep["std"]):
        raise bad(f"std {prep['std']!r} has a value <= 0")


def temperature_of(calibration, path) -> float:
    """The softmax temperature a model file carries (1.0 when uncalibrated): a finite number above 0.

    A zero, negative, NaN or infinite temperature would flip or destroy every probability, so it is refused.
    """
    if calibration is None:
        return 1.0
    if not isinstance(calibration, dict):
        raise FERError(f"{path}: its calibration metadata is damaged (not a dict): re-calibrate the model")
    t = calibration.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.01 <= t <= 100:
        raise FERError(f"{path}: its calibration temperature {str(t)[:40]!r} is not a number between 0.01 and 100: "
                       "re-calibrate the model")
    return float(t)


def check_model_type(model_type, path) -> None:
    if model_type not in MODEL_TYPES:
        raise FERError(f"{path}: unknown model type {str(model_type)[:50]!r} (expected {', '.join(MODEL_TYPES)})")


def parse_onnx_metadata(meta: dict, path) -> dict:
    """An ONNX file's metadata_props (str -> str) -> {model_type, class_names, preprocessing, calibration},
    checked. Readers with and without the onnx package (onnx_export, the ONNX Runtime predictor) share it."""
    if "class_names" not in meta or "preprocessing" not in meta:
        raise FERError(f"{path} has no FER metadata (class names, preprocessing): export it with this toolkit")
    info = {"model_type": meta.get("model_type"), "calibration": None}
    for key in ("class_names", "preprocessing", "calibration"):
        if key in meta:
            try:
                info[key] = json.loads(meta[key])
            except (ValueError, RecursionError) as e:
                raise FERError(f"{path}: its {key} metadata is not valid JSON ({str(e)[:80]})") from None
    check_model_type(info["model_type"], path)
    check_class_names(info["class_names"], path)
    check_preprocessing(info["preprocessing"], path)
    temperature_of(info["calibration"], path)
    return info


def read_metadata_props(path) -> dict:
    """An ONNX file's metadata_props (str -> str), read straight from its protobuf bytes: no onnx package, no
    ONNX Runtime session, and for a large model only the top-level fields' headers are read (memory-mapped)."""
    import mmap

    def varint(buf, pos):
        value = shift = 0
        while True:
            if pos >= len(buf) or shift > 63:
                raise ValueError("truncated varint")
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, pos

    def fields(buf, start, end):
        pos = start
        while pos < end:
            key, pos = varint(buf, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = varint(buf, pos)
                continue
            if wire == 2:
                n, pos = varint(buf, pos)
                if pos + n > end:
                    raise ValueError("field past the end")
                yield number, pos, pos + n
                pos += n
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                raise ValueError(f"wire type {wire}")

    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:          # an empty file cannot be mapped
            raise FERError(f"{path} is empty, not an ONNX file") from None
    with buf:
        props = {}
        try:
            for number, start, end in fields(buf, 0, len(buf)):
                if number == 14:                    # ModelProto.metadata_props: StringStringEntryProto
                    entry = {n: buf[s:e].decode("utf-8") for n, s, e in fields(buf, start, end) if n in (1, 2)}
                    props[entry.get(1, "")] = entry.get(2, "")
        except (ValueError, UnicodeDecodeError):
            raise FERError(f"{path} is not a readable ONNX file") from None
    return props


def set_metadata(proto, props: dict) -> None:
    """Replace an ONNX ModelProto's metadata_props with `props` (str -> str): the one place a model file's
    metadata is written (export, calibration, quantization)."""
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=str(value))


def read_onnx_metadata(path) -> dict:
    """model_type, class_names, preprocessing and calibration as export_onnx stored them: the one reader of an
    ONNX file's metadata (no onnx package, no session; the graph is checked where one is loaded: check_graph)."""
    if not Path(path).is_file():
        raise FERError(f"ONNX file not found: {path}")
    return parse_onnx_metadata(read_metadata_props(path), path)


def check_graph(path, info: dict, inputs: dict, outputs: dict) -> None:
    """The graph must be what the metadata says: input N x C x H x W, outputs logits (N x classes) and embedding.

    inputs, outputs: name -> shape in graph order, as the onnx package or an ONNX Runtime session gives them
    (an int for a fixed size, anything else for a dynamic one)."""
    if list(inputs) != ["input"] or list(outputs)[:2] != ["logits", "embedding"]:
        raise FERError(f"{path}: the graph has inputs {sorted(inputs)[:5]} and outputs {sorted(outputs)[:5]}, "
                       f"not input / logits, embedding: export it with this toolkit")
    prep, shape = info["preprocessing"], list(inputs["input"])
    expected = [prep["channels"], *prep["input_size"]]
    if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected)):
        raise FERError(f"{path}: its graph takes input {shape}, but its metadata says "
                       f"N x {expected[0]} x {expected[1]} x {expected[2]}")
    logits, n = list(outputs["logits"]), len(info["class_names"])
    if len(logits) != 2 or (isinstance(logits[1], int) and logits[1] != n):
        raise FERError(f"{path}: its graph gives {logits[1] if len(logits) == 2 else logits} logits per face, but "
                       f"its metadata names {n} classes ({', '.join(map(str, info['class_names']))})")
