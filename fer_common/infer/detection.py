"""Face detection: YuNet (default, shipped in models/, run by ONNX Runtime: infer/yunet.py) or OpenCV's bundled Haar
cascade; boxes in FER-2013 framing.

    detector = FaceDetector()                 # once, never per frame
    boxes = detector.detect(frame_bgr)        # K x 4 int [x, y, w, h], left to right, framed as FER-2013 faces
    crops = crop_faces(frame_bgr, boxes)      # the boxes' pixels, clipped to the image

The classifier was trained on FER-2013 crops, so a detector's box is not what it should see: `detect` turns
each face into the square crop FER-2013 would have made of it (fitted with benchmarks/framing_study.py,
figures in models/DETECTOR.md). `yunet_detections` gives the detector's own boxes, landmarks and scores.
"""

from pathlib import Path

import cv2
import numpy as np

from fer_common import cli
from fer_common.errors import FERError
from fer_common.shipped import DETECTOR_FILE, SHIPPED_MODELS_DIR
from fer_common.files import os_error_text, printable, sha256_file
from fer_common.infer.yunet import OUTPUTS, STRIDES, YuNetRuntime

DETECTORS = ("yunet", "haar")
HAAR_FILE = "haarcascade_frontalface_default.xml"
YUNET_FILE = DETECTOR_FILE
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
SHIPPED_YUNET = SHIPPED_MODELS_DIR / YUNET_FILE
# YuNet finds faces of about 10 to 300 px in the image it is given (OpenCV Zoo); under 16 px its scores fall
# to those of false faces (0.5-0.8 on Test_files grids), so the fine pass puts the smallest face at 16 px.
YUNET_MIN_FACE = 16

# FER-2013 framing of a YuNet face, fitted on FER-2013 faces placed in larger canvases (models/DETECTOR.md):
# the crop is a square of side FRAME_SCALE * sqrt(w * h), centred at the box centre + FRAME_OFFSET * (w, h).
FRAME_SCALE = 1.14
FRAME_OFFSET = (0.0, 0.0)
# Scores (models/DETECTOR.md): a face needs SCORE_THRESHOLD, and SMALL_FACE_SCORE when it is under SMALL_FACE px
# at the first pass's scale: every false box YuNet gave on Test_files above 0.4 was that small.
SCORE_THRESHOLD = 0.5
SMALL_FACE, SMALL_FACE_SCORE = 2 * YUNET_MIN_FACE, 0.6
NMS_THRESHOLD = 0.3
TOP_K = 5000                # the most candidate boxes kept before NMS (cv2.FaceDetectorYN's top_k)
YUNET_STRIDES = STRIDES
# Detection copies are shrunk bilinearly down to this scale (5x quicker than area averaging, the same faces on
# the hard cases), by area averaging below it, where bilinear would alias.
LINEAR_DOWNSCALE_MIN = 0.5
# Haar boxes keep the framing the project always used: the box grown by 10% of its size on every side.
HAAR_MARGIN = 0.1


def yunet_model_path(model_path=None) -> Path:
    """The YuNet ONNX file: the one given, else the one shipped in models/ (SHA-256 checked)."""
    if model_path:
        path = Path(model_path)
        if not path.is_file():
            raise FERError(f"YuNet model not found: {path}")
        return path
    restore = (f"restore it with `git checkout -- models/{YUNET_FILE}` in the repository (or reinstall the "
               f"package), pass --detector_model PATH, or use --detector haar")
    if not SHIPPED_YUNET.is_file():
        raise FERError(f"the shipped YuNet face detector is missing ({SHIPPED_YUNET}): {restore}")
    if sha256_file(SHIPPED_YUNET) != YUNET_SHA256:
        raise FERError(f"the shipped YuNet face detector {SHIPPED_YUNET} is damaged (SHA-256 mismatch): {restore}")
    return SHIPPED_YUNET


def load_yunet(path: Path, score_threshold: float, nms_threshold: float) -> YuNetRuntime:
    """YuNet on ONNX Runtime from `path`, or one line saying why the file is not a YuNet (2023mar) model."""
    name = printable(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FERError(f"cannot read the face detector model {name}: {os_error_text(e)}") from None
    if not data:
        raise FERError(f"{name} is empty, not a YuNet face detector model (--detector_model)")
    try:
        net = YuNetRuntime(data, score_threshold, nms_threshold, TOP_K, name=name)
    except FERError:
        raise FERError(f"{name} is not an ONNX file ONNX Runtime can load, so not a YuNet face detector model "
                       f"(--detector_model)") from None
    outputs = {o.name for o in net.session.get_outputs()}
    if not set(OUTPUTS) <= outputs:
        shown = ", ".join(sorted(outputs)[:4]) or "none"
        raise FERError(f"{name} is not a YuNet face detector model (its outputs are {shown}; YuNet 2023mar has "
                       f"cls_8 ... kps_32): pass {YUNET_FILE} as --detector_model")
    try:
        net.detect(np.zeros((64, 64, 3), np.uint8))      # runs it once: fails here, not on the first image
    except Exception:
        raise FERError(f"ONNX Runtime cannot run {name} as a YuNet face detector (--detector_model)") from None
    return net


class FaceDetector:
    """Faces in a BGR (or gray) frame, as integer [x, y, w, h] boxes in FER-2013 framing.

    kind: 'yunet' (the shipped model on ONNX Runtime, as cv2.FaceDetectorYN decodes it; default) or 'haar'
        (OpenCV's bundled cascade).
    detect_size (yunet): the image is detected on a copy whose shorter side is at most this, so that a face
        filling the frame stays within the ~300 px YuNet finds; boxes are mapped back.
    min_face (yunet): smallest face side, in pixels of the original image, to find. When the first pass is too
        coarse for it (detect_size / shorter side * min_face < 16 px: at 24, images over 480 px on the shorter
        side), a second pass at a finer scale adds the small faces. 0: one pass (real_time_video.py).
    score_threshold, small_face_score, nms_threshold (yunet): chosen on Test_files and FER-2013 faces
        (models/DETECTOR.md); faces under 32 px at the first pass's scale need small_face_score.
    detect_width (haar): frames wider than this are detected on a downscaled copy; 0 = never.
    min_face_fraction (haar): smallest face side the cascade looks for, as a fraction of the shorter side.
    min_neighbors (haar): votes a face needs; 6 rather than OpenCV's usual 5 drops most false faces on clothing.
    Every keyword argument is a measured setting with its default (models/DETECTOR.md) and a flag of
    add_detector_args, so scripts and the API set them alike.
    """

    def __init__(self, kind: str = "yunet", model_path=None, detect_size: int = 320, min_face: int = 24,
                 score_threshold: float = SCORE_THRESHOLD, small_face_score: float = SMALL_FACE_SCORE,
                 nms_threshold: float = NMS_THRESHOLD, detect_width: int = 640,
                 min_face_fraction: float = 0.05, min_neighbors: int = 6):
        if kind not in DETECTORS:
            raise FERError(f"unknown detector '{kind}' (use {' or '.join(DETECTORS)})")
        self.kind = kind
        self.detect_size, self.min_face = int(detect_size), int(min_face or 0)
        self.detect_width = int(detect_width or 0)
        self.min_face_fraction, self.min_neighbors = min_face_fraction, min_neighbors
        if kind == "haar":
            path = Path(cv2.data.haarcascades) / HAAR_FILE
            self.cascade = cv2.CascadeClassifier(str(path))
            if self.cascade.empty():
                raise FERError(f"OpenCV's Haar cascade is missing ({path}): reinstall opencv-python")
            return
        if self.detect_size < 32:
            raise FERError(f"detect_size must be at least 32 (got {self.detect_size})")
        self.model_path = yunet_model_path(model_path)
        self.score_threshold, self.small_face_score = score_threshold, small_face_score
        self._net = load_yunet(self.model_path, score_threshold, nms_threshold)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """K x 4 int32 boxes [x, y, w, h], FER-2013 framing, in the frame's coordinates, sorted left to right."""
        return self.detect_with_scores(frame)[0]

    def detect_with_scores(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """detect's boxes, clipped to the frame (the crop the model sees), and the detector's score of each
        (None for Haar, which gives none)."""
        if self.kind == "haar":
            boxes, scores = np.array([expand_box(b, HAAR_MARGIN, frame.shape) for b in self._detect_haar(frame)],
                                     np.int32).reshape(-1, 4), None
        else:
            faces = self.yunet_detections(frame)
            boxes = np.array([expand_box(b, 0.0, frame.shape) for b in fer_framing(faces)], np.int32).reshape(-1, 4)
            scores = faces[:, 14].astype(np.float32)
        order = np.argsort(boxes[:, 0], kind="stable")
        return boxes[order], None if scores is None else scores[order]

    def yunet_detections(self, frame: np.ndarray) -> np.ndarray:
        """The detector's own faces: N x 15 float32 rows (x, y, w, h, right eye, left eye, nose tip,
        right and left mouth corner as x, y pairs, score) for YuNet; N x 4 boxes for Haar; frame coordinates."""
        if self.kind == "haar":
            return np.asarray(self._detect_haar(frame), np.float32).reshape(-1, 4)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        h, w = frame.shape[:2]
        if min(h, w) < YUNET_MIN_FACE:
            return np.zeros((0, 15), np.float32)    # no face fits (YuNet's boxes on such strips are garbage)
        scale = min(1.0, self.detect_size / min(h, w))
        faces = self._detect_at(frame, scale)
        if self.min_face and scale * self.min_face < YUNET_MIN_FACE:
            # The first pass cannot see faces this small: a finer pass adds those it is blind to (under
            # 2x its smallest face), and the two sets are merged without duplicates.
            fine = self._detect_at(frame, min(1.0, YUNET_MIN_FACE / self.min_face))
            fine = fine[np.sqrt(fine[:, 2] * fine[:, 3]) * scale < 2 * YUNET_MIN_FACE]
            faces = _merge(faces, fine)
        faces = faces[np.isfinite(faces).all(axis=1)]
        # A face must be a real box that overlaps the frame: YuNet can return nonsense on degenerate inputs.
        inside = ((faces[:, 2] >= 1) & (faces[:, 3] >= 1) & (faces[:, 0] < w) & (faces[:, 1] < h)
                  & (faces[:, 0] + faces[:, 2] > 0) & (faces[:, 1] + faces[:, 3] > 0))
        faces = faces[inside]
        return faces[keep_scores(faces, self.score_threshold, self.small_face_score, scale)]

    def _detect_at(self, frame: np.ndarray, scale: float) -> np.ndarray:
        h, w = frame.shape[:2]
        shrink = cv2.INTER_LINEAR if scale >= LINEAR_DOWNSCALE_MIN else cv2.INTER_AREA
        small = frame if scale >= 1 else cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                     interpolation=shrink)
        faces = self._net.detect(small)
        faces[:, :14] /= np.array([small.shape[1] / w, small.shape[0] / h] * 7, np.float32)
        return faces

    def _detect_haar(self, frame: np.ndarray):
        h, w = frame.shape[:2]
        scale = self.detect_width / w if 0 < self.detect_width < w else 1.0
        image = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else frame
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        side = max(20, round(self.min_face_fraction * min(gray.shape[:2])))
        # scaleFactor 1.1 is OpenCV's recommended pyramid step: a coarser one is faster but loses faces.
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                              minSize=(side, side))
        return [np.round(np.asarray(b, np.float64) / scale).astype(np.int32) for b in boxes]


def keep_scores(faces: np.ndarray, score_threshold: float, small_face_score: float,
                pass_scale: float = 1.0) -> np.ndarray:
    """Which faces (N x 15) pass the score thresholds; a face is small when under SMALL_FACE px at pass_scale
    (the first pass's scale: the size / the faces' image's)."""
    small = np.sqrt(faces[:, 2] * faces[:, 3]) * pass_scale < SMALL_FACE
    return faces[:, 14] >= np.where(small, max(small_face_score, score_threshold), score_threshold)


def _merge(a: np.ndarray, b: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """The rows of a and b, without b's that overlap a kept face (greedy NMS by score)."""
    faces = np.concatenate([a, b])
    if len(a) == 0 or len(b) == 0:
        return faces
    keep = cv2.dnn.NMSBoxes(faces[:, :4].tolist(), faces[:, 14].tolist(), 0.0, iou_threshold)
    return faces[np.sort(np.asarray(keep, int).reshape(-1))]


def fer_framing(faces: np.ndarray, scale: float = FRAME_SCALE, offset=FRAME_OFFSET) -> np.ndarray:
    """YuNet faces (N x 15) -> N x 4 int32 square boxes framed as FER-2013 crops (may extend past the image)."""
    faces = np.asarray(faces, np.float64)
    if faces.size == 0:
        return np.zeros((0, 4), np.int32)
    x, y, w, h = faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 3]
    side = scale * np.sqrt(np.maximum(w * h, 1))
    cx, cy = x + w * (0.5 + offset[0]), y + h * (0.5 + offset[1])
    return np.round(np.stack([cx - side / 2, cy - side / 2, side, side], 1)).astype(np.int32).reshape(-1, 4)


def expand_box(box, margin: float, shape) -> tuple[int, int, int, int]:
    """[x, y, w, h] grown by `margin` of its size on every side, clipped to an image of `shape` (at least 1x1)."""
    x, y, w, h = (int(v) for v in box)
    ih, iw = shape[:2]
    dx, dy = round(w * margin), round(h * margin)
    x0, y0 = min(max(x - dx, 0), iw - 1), min(max(y - dy, 0), ih - 1)
    x1, y1 = max(min(x + w + dx, iw), x0 + 1), max(min(y + h + dy, ih), y0 + 1)
    return x0, y0, x1 - x0, y1 - y0


def crop_faces(frame: np.ndarray, boxes, margin: float = 0.0) -> list[np.ndarray]:
    """One crop per box (already framed by FaceDetector.detect), plus `margin` of the box size on each side,
    clipped to the image."""
    crops = []
    for box in boxes:
        x, y, w, h = expand_box(box, margin, frame.shape)
        crops.append(frame[y:y + h, x:x + w])
    return crops


def add_detector_args(parser, min_face: int = 24, detect_size: int = 320):
    """Detection flags; `min_face` and `detect_size` are the script's defaults (real_time_video.py: one pass on
    a 240 px copy per frame)."""
    g = parser.add_argument_group("Detection")
    g.add_argument("--detector", default="yunet", choices=DETECTORS,
                   help="yunet: the YuNet face detector, shipped in models/, run by ONNX Runtime (fast, finds "
                        "tilted, small and dim faces); haar: OpenCV's bundled Haar cascade (the old default)")
    g.add_argument("--detector_model", metavar="PATH", type=cli.path_arg,
                   help=f"another YuNet ONNX file (None: the shipped models/{YUNET_FILE})")
    g.add_argument("--min_face", type=cli.int_range(0, 4096, name="min_face"), default=min_face, metavar="PX",
                   help="yunet: smallest face side to find, in image pixels (large images get a second, finer "
                        "pass only when the first cannot see faces this small; 0: one pass)")
    g.add_argument("--detect_size", type=cli.int_range(32, 4096, name="detect_size"), default=detect_size,
                   metavar="PX", help="yunet: detect on a copy at most PX on its shorter side; one pass finds faces "
                                      "from 16 / PX of that side up to the whole frame")
    g.add_argument("--detect_width", type=cli.detect_width, default=640,
                   help="haar: detect on a copy downscaled to this width when the frame is wider (0: full size)")
    return g


def detector_settings(args) -> dict:
    """The FaceDetector keyword arguments of the detection flags: plain values (a model path made absolute),
    so that a worker process elsewhere (fer_common.cluster) makes the same detector."""
    model = None if args.detector_model is None else str(Path(args.detector_model).resolve())
    return {"kind": args.detector, "model_path": model, "detect_size": args.detect_size, "min_face": args.min_face,
            "detect_width": args.detect_width}


def detector_from_args(args) -> FaceDetector:
    return FaceDetector(**detector_settings(args))


class DetectorPool:
    """One detector for many threads: each call borrows one of `size` detectors made by `make` (OpenCV's are not
    thread-safe), so up to `size` detections run at once and more callers wait their turn (fer serve)."""

    def __init__(self, make, size: int):
        import queue

        self._free = queue.SimpleQueue()
        for _ in range(max(1, int(size))):
            self._free.put(make())
        first = self._free.get()
        self.kind = first.kind
        self._free.put(first)

    def detect_with_scores(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        detector = self._free.get()
        try:
            return detector.detect_with_scores(frame)
        finally:
            self._free.put(detector)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        return self.detect_with_scores(frame)[0]
