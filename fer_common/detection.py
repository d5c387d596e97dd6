"""Face detection: OpenCV's bundled Haar cascade (default, offline) or YuNet; crops with a margin.

    detector = FaceDetector()                 # once, never per frame
    boxes = detector.detect(frame_bgr)        # K x 4 int [x, y, w, h], left to right
    crops = crop_faces(frame_bgr, boxes)      # margin 10%, clipped to the image
"""

import hashlib
import os
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from .cli import FERError

DETECTORS = ("haar", "yunet")
HAAR_FILE = "haarcascade_frontalface_default.xml"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_URL = f"https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/{YUNET_FILE}"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


def cache_dir() -> Path:
    """~/.cache/fer_common (or $XDG_CACHE_HOME/fer_common)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fer_common"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def yunet_model_path(model_path=None) -> Path:
    """The YuNet ONNX file: the one given, else the cached copy, else downloaded once (SHA-256 checked)."""
    if model_path:
        path = Path(model_path)
        if not path.is_file():
            raise FERError(f"YuNet model not found: {path}")
        return path
    path = cache_dir() / YUNET_FILE
    if path.is_file() and _sha256(path) == YUNET_SHA256:
        return path
    offline_hint = (f"--detector yunet needs {YUNET_FILE}: download it from {YUNET_URL} and pass "
                    f"--detector_model PATH, or use the default --detector haar")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        with urllib.request.urlopen(YUNET_URL, timeout=15) as response:
            tmp.write_bytes(response.read())
    except OSError:   # URLError, timeouts, an unwritable cache: all mean "we could not get it"
        raise FERError(f"could not download the YuNet model (offline?): {offline_hint}") from None
    if _sha256(tmp) != YUNET_SHA256:
        tmp.unlink(missing_ok=True)
        raise FERError(f"the downloaded YuNet model failed its SHA-256 check: {offline_hint}")
    os.replace(tmp, path)
    return path


class FaceDetector:
    """Faces in a BGR (or gray) frame, as integer [x, y, w, h] boxes.

    kind: 'haar' (OpenCV's bundled frontal-face cascade, works offline) or 'yunet' (cv2.FaceDetectorYN).
    detect_width: frames wider than this are detected on a downscaled copy (boxes mapped back); 0 = never.
    min_face: smallest face side the Haar cascade looks for, as a fraction of the image's shorter side.
    min_neighbors: Haar votes a face needs; 6 rather than OpenCV's usual 5 drops most false faces on clothing
        (11 -> 4 wrong frames of 80 on Test_files/Video_Test_1.mp4) without losing a real one there.
    """

    def __init__(self, kind: str = "haar", model_path=None, detect_width: int = 640, min_face: float = 0.05,
                 min_neighbors: int = 6, score_threshold: float = 0.7):
        if kind not in DETECTORS:
            raise FERError(f"unknown detector '{kind}' (use {' or '.join(DETECTORS)})")
        self.kind = kind
        self.detect_width = int(detect_width or 0)
        self.min_face = min_face
        self.min_neighbors = min_neighbors
        if kind == "haar":
            path = Path(cv2.data.haarcascades) / HAAR_FILE
            self.cascade = cv2.CascadeClassifier(str(path))
            if self.cascade.empty():
                raise FERError(f"OpenCV's Haar cascade is missing ({path}): reinstall opencv-python")
        else:
            self.model_path = yunet_model_path(model_path)
            try:
                self.yunet = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), score_threshold, 0.3, 5000)
            except cv2.error:
                raise FERError(f"OpenCV cannot load the YuNet model {self.model_path}") from None
            self._input_size = None

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """K x 4 int32 boxes [x, y, w, h] in the frame's coordinates, sorted left to right."""
        h, w = frame.shape[:2]
        scale = self.detect_width / w if 0 < self.detect_width < w else 1.0
        small = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else frame
        boxes = self._detect_haar(small) if self.kind == "haar" else self._detect_yunet(small)
        if len(boxes) == 0:
            return np.zeros((0, 4), np.int32)
        boxes = np.round(np.asarray(boxes, np.float64) / scale).astype(np.int32)
        return boxes[np.argsort(boxes[:, 0], kind="stable")]

    def _detect_haar(self, image: np.ndarray):
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        side = max(20, round(self.min_face * min(gray.shape[:2])))
        # scaleFactor 1.1 is OpenCV's recommended pyramid step: a coarser one is faster but loses faces.
        return self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                             minSize=(side, side))

    def _detect_yunet(self, image: np.ndarray):
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        size = (image.shape[1], image.shape[0])
        if size != self._input_size:     # only when the frame size changes, not per frame
            self.yunet.setInputSize(size)
            self._input_size = size
        _, faces = self.yunet.detect(image)
        if faces is None:
            return []
        boxes = faces[:, :4].copy()
        boxes[:, :2] = np.maximum(boxes[:, :2], 0)
        return boxes


def expand_box(box, margin: float, shape) -> tuple[int, int, int, int]:
    """[x, y, w, h] grown by `margin` of its size on every side, clipped to an image of `shape` (at least 1x1)."""
    x, y, w, h = (int(v) for v in box)
    ih, iw = shape[:2]
    dx, dy = round(w * margin), round(h * margin)
    x0, y0 = min(max(x - dx, 0), iw - 1), min(max(y - dy, 0), ih - 1)
    x1, y1 = max(min(x + w + dx, iw), x0 + 1), max(min(y + h + dy, ih), y0 + 1)
    return x0, y0, x1 - x0, y1 - y0


def crop_faces(frame: np.ndarray, boxes, margin: float = 0.1) -> list[np.ndarray]:
    """One crop per box, with `margin` of the box size added on each side, clipped to the image."""
    crops = []
    for box in boxes:
        x, y, w, h = expand_box(box, margin, frame.shape)
        crops.append(frame[y:y + h, x:x + w])
    return crops


def add_detector_args(parser):
    g = parser.add_argument_group("Detection")
    g.add_argument("--detector", default="haar", choices=DETECTORS,
                   help="haar: OpenCV's bundled cascade (offline); yunet: OpenCV's DNN detector (more accurate)")
    g.add_argument("--detector_model", metavar="PATH",
                   help=f"YuNet ONNX file ({YUNET_FILE}); default: downloaded once into ~/.cache/fer_common")
    g.add_argument("--detect_width", type=int, default=640,
                   help="detect on a copy downscaled to this width when the frame is wider (0: full size)")
    return g


def detector_from_args(args) -> FaceDetector:
    return FaceDetector(args.detector, args.detector_model, detect_width=args.detect_width)
