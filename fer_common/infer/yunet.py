"""YuNet (OpenCV Zoo's face detector, 2023mar) on ONNX Runtime: the network cv2.FaceDetectorYN runs, with its
decoding and non-maximum suppression, about 3x faster on these CPUs than OpenCV's DNN module (benchmarks/README.md).

    net = YuNetRuntime(model_bytes, score_threshold=0.5, nms_threshold=0.3, top_k=5000)
    faces = net.detect(image_bgr)     # N x 15 float32, as cv2.FaceDetectorYN.detect gives them

The shipped file declares a fixed 1 x 3 x 640 x 640 input (OpenCV reshapes it for each image size; ONNX Runtime
refuses other sizes), so it is loaded with its input and output shapes made free: `free_shapes` rewrites the
ONNX file's protobuf fields directly, which needs neither the onnx package nor a second model file.
"""

import math

import cv2
import numpy as np

from fer_common.errors import FERError
from fer_common.runtime import make_session

STRIDES = (8, 16, 32)
DIVISOR = 32              # the network's input sides must be multiples of its largest stride
OUTPUTS = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES]


# ------------------------------------------------------------------------------ ONNX protobuf, on the wire

def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(data: bytes):
    """(field number, wire type, payload, the field's whole encoding) of a protobuf message."""
    i = 0
    while i < len(data):
        start = i
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            payload = value
        elif wire == 1:
            payload, i = data[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            payload, i = data[i:i + length], i + length
        elif wire == 5:
            payload, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by ONNX")
        if i > len(data):
            raise ValueError("truncated protobuf")
        yield number, wire, payload, data[start:i]


def _message(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _rewrite(data: bytes, path: tuple, edit) -> bytes:
    """`data` with each sub-message reached through the field numbers `path` replaced by edit(sub-message)."""
    out = bytearray()
    for number, wire, payload, whole in _fields(data):
        if wire == 2 and number == path[0]:
            inner = edit(payload) if len(path) == 1 else _rewrite(payload, path[1:], edit)
            if inner is not None:
                out += _message(number, inner)
        else:
            out += whole
    return bytes(out)


def _free_dims(shape: bytes) -> bytes:
    """A TensorShapeProto whose every dimension is a named, free one (dim_param) instead of a fixed size."""
    dims = [payload for number, _, payload, _ in _fields(shape) if number == 1]
    return b"".join(_message(1, _message(2, f"d{i}".encode())) for i in range(len(dims)))


# ModelProto.graph = 7; GraphProto.input = 11, output = 12, value_info = 13; ValueInfoProto.type = 2;
# TypeProto.tensor_type = 1; TypeProto.Tensor.shape = 2 (onnx/onnx.proto).
_SHAPE = (2, 1, 2)


def free_shapes(model: bytes) -> bytes:
    """The ONNX model with free input and output sizes and without its recorded intermediate shapes (which
    ONNX Runtime would otherwise check against the 640 x 640 they were recorded at)."""
    model = _rewrite(model, (7, 11) + _SHAPE, _free_dims)
    model = _rewrite(model, (7, 12) + _SHAPE, _free_dims)
    return _rewrite(model, (7, 13), lambda _: None)


# ------------------------------------------------------------------------------------------------ detector

class YuNetRuntime:
    """cv2.FaceDetectorYN's detect() on ONNX Runtime: N x 15 float32 rows (box x, y, w, h; right eye, left eye,
    nose tip, right and left mouth corners as x, y; score), best first after NMS, in the image's pixels.

    The image is padded (bottom, right) to multiples of 32 and fed as BGR float pixels, as OpenCV does; each
    grid cell's box and landmarks are decoded from its offsets at strides 8, 16 and 32, its score is
    sqrt(classification x objectness), and overlapping boxes are suppressed by cv2.dnn.NMSBoxes on the same
    integer boxes OpenCV uses. One intra-op thread: callers run one detector per thread (the bulk workers,
    the video's detection thread, fer serve's pool) or share one under a lock (FER)."""

    def __init__(self, model: bytes, score_threshold: float, nms_threshold: float, top_k: int, name: str = "YuNet"):
        self.score_threshold, self.nms_threshold, self.top_k = score_threshold, nms_threshold, top_k
        try:
            model = free_shapes(model)
        except (ValueError, IndexError):
            raise FERError(f"{name} is not an ONNX file, so not a YuNet face detector model "
                           f"(--detector_model)") from None
        self.session, _ = make_session(model, "cpu", "cpu", threads=1, name=name)
        self.input = self.session.get_inputs()[0].name

    def detect(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        ph, pw = math.ceil(h / DIVISOR) * DIVISOR, math.ceil(w / DIVISOR) * DIVISOR
        # Plane by plane and zeros only in the padding: half the time of one strided copy into a zeroed blob.
        blob = np.empty((1, 3, ph, pw), np.float32)
        blob[0, :, h:], blob[0, :, :h, w:] = 0, 0
        for channel, plane in enumerate(cv2.split(image)):
            blob[0, channel, :h, :w] = plane
        out = dict(zip(OUTPUTS, self.session.run(OUTPUTS, {self.input: blob})))
        faces = np.concatenate([self._decode(out, stride, pw // stride) for stride in STRIDES])
        if len(faces) > 1:
            boxes = np.trunc(faces[:, :4]).astype(np.int32)        # OpenCV's Rect2i of each face
            keep = cv2.dnn.NMSBoxes(boxes.tolist(), faces[:, 14].tolist(), self.score_threshold,
                                    self.nms_threshold, top_k=self.top_k)
            faces = faces[np.asarray(keep, int).reshape(-1)]
        return faces

    def _decode(self, out: dict, stride: int, cols: int) -> np.ndarray:
        """The faces of one stride's grid (cols cells a row) that pass the score threshold, before NMS."""
        cls = np.clip(out[f"cls_{stride}"].reshape(-1), 0, 1)
        obj = np.clip(out[f"obj_{stride}"].reshape(-1), 0, 1)
        score = np.sqrt(cls * obj)
        idx = np.flatnonzero(score >= self.score_threshold)
        if idx.size == 0:
            return np.zeros((0, 15), np.float32)
        r, c = (idx // cols).astype(np.float32), (idx % cols).astype(np.float32)
        bbox = out[f"bbox_{stride}"].reshape(-1, 4)[idx]
        kps = out[f"kps_{stride}"].reshape(-1, 10)[idx]
        bw, bh = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
        cx, cy = (c + bbox[:, 0]) * stride, (r + bbox[:, 1]) * stride
        faces = np.empty((idx.size, 15), np.float32)
        faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 3] = cx - bw / 2, cy - bh / 2, bw, bh
        faces[:, 4:14:2] = (kps[:, 0::2] + c[:, None]) * stride
        faces[:, 5:14:2] = (kps[:, 1::2] + r[:, None]) * stride
        faces[:, 14] = score[idx]
        return faces
