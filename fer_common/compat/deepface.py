"""deepface's DeepFace.analyze for the emotion action, answered by this toolkit: one changed import.

    from deepface import DeepFace   ->   from fer_common.compat.deepface import DeepFace

    DeepFace.analyze("photo.jpg")   # [{'emotion': {'angry': 1.3, ..., 'neutral': 2.4}, 'dominant_emotion': 'happy',
                                    #   'region': {'x': .., 'y': .., 'w': .., 'h': .., 'left_eye': None,
                                    #              'right_eye': None}, 'face_confidence': 0.94}]

As deepface 0.0.103: analyze's keywords; a path, a BGR numpy array, a base64 data URI or a binary file object,
or a list of them (a list of answers back); one dict per face with the emotion percentages (summing to 100,
deepface's names and order), the dominant emotion, the region and the detector's confidence (two decimals);
no face with enforce_detection: a ValueError in deepface's words; without it, the whole image is the face
(confidence 0); detector_backend='skip' classifies the whole image. Errors are ValueErrors, as deepface's are.

Differs: only 'emotion' is answered ('age', 'gender' and 'race' need deepface's own models: refused in one
line); the answers are this toolkit's detector (YuNet) and shipped model, the region the square crop the model
saw; eye positions are not reported (None); faces are never aligned (align has nothing to do); another
detector_backend and expand_percentage have nothing to act on here (noted once); anti_spoofing=True is refused,
as no face could be checked; a URL is not fetched (the toolkit runs offline).
"""

import threading

import numpy as np

from fer_common.api import FER
from fer_common.compat.common import errors_as, note_once, peer_image, peer_names
from fer_common.errors import FERError

__all__ = ["DeepFace", "FaceNotDetected", "ImgNotFound"]

ACTIONS = ("emotion", "age", "gender", "race")
# deepface's face detectors (modeling.py); 'skip' takes the whole image as the face.
BACKENDS = ("opencv", "mtcnn", "ssd", "dlib", "retinaface", "mediapipe", "yolov8n", "yolov8m", "yolov8l",
            "yolov11n", "yolov11s", "yolov11m", "yolov11l", "yolov12n", "yolov12s", "yolov12m", "yolov12l", "yunet",
            "fastmtcnn", "centerface", "skip")
# How deepface names an input that is not a path in its messages.
INPUT_NAMES = {"ndarray": "numpy array", "base64": "base64 encoded string", "io": "io object"}


class ImgNotFound(FERError, ValueError):
    """An input that is no readable image (deepface's ImgNotFound, a ValueError)."""


class FaceNotDetected(FERError, ValueError):
    """No face in the image while enforce_detection is on (deepface's FaceNotDetected, a ValueError)."""


_models: dict = {}
_models_lock = threading.Lock()


def _model() -> FER:
    """The shipped model and YuNet, loaded on the first call and kept, as deepface keeps its models."""
    with _models_lock:
        if "fer" not in _models:
            _models["fer"] = FER()
        return _models["fer"]


def _check_actions(actions) -> None:
    if isinstance(actions, str):
        actions = (actions,)
    if not hasattr(actions, "__getitem__") or not actions:
        raise ValueError("`actions` must be a list of strings.")
    for action in actions:
        if action not in ACTIONS:
            raise ValueError(f"Invalid action passed ({action!r}). Valid actions are `emotion`, `age`, `gender`, "
                             f"`race`.")
    others = [a for a in actions if a != "emotion"]
    if others:
        raise ValueError(f"actions {others} are not available here: this toolkit answers 'emotion' only (age, "
                         f"gender and race need deepface's own models)")


def _input_name(img) -> str:
    if isinstance(img, np.ndarray):
        return INPUT_NAMES["ndarray"]
    if isinstance(img, str) and img.startswith("data:image/"):
        return INPUT_NAMES["base64"]
    if callable(getattr(img, "read", None)):
        return INPUT_NAMES["io"]
    return str(img)


def _face(face, names: dict) -> dict:
    """One toolkit Face as deepface gives an analysed face (emotion action); no detector score (the whole
    image as the face): confidence 0, as deepface's."""
    total = sum(face.probabilities.values()) or 1.0
    emotion = {peer: 100.0 * float(face.probabilities[name]) / total for name, peer in names.items()}
    x, y, w, h = (int(v) for v in face.box)
    return {"emotion": emotion, "dominant_emotion": max(emotion, key=emotion.get),
            "region": {"x": x, "y": y, "w": w, "h": h, "left_eye": None, "right_eye": None},
            "face_confidence": round(float(face.score or 0), 2)}


class DeepFace:
    """deepface's DeepFace module, its analyze function for the emotion action."""

    @staticmethod
    def analyze(img_path, actions=("emotion",), enforce_detection: bool = True, detector_backend: str = "opencv",
                align: bool = True, expand_percentage: int = 0, silent: bool = False,
                anti_spoofing: bool = False) -> list:
        """The emotions of every face in an image, as deepface gives them (see the module); a list of images
        (or a 4-D array) gives a list of those lists."""
        if isinstance(img_path, list) or (isinstance(img_path, np.ndarray) and img_path.ndim == 4):
            return [DeepFace.analyze(one, actions, enforce_detection, detector_backend, align, expand_percentage,
                                     silent, anti_spoofing) for one in img_path]
        _check_actions(actions)
        if anti_spoofing:
            raise ValueError("anti_spoofing is not available here: this toolkit cannot tell a real face from a "
                             "spoof, so none is passed as real")
        if detector_backend not in BACKENDS:
            raise ValueError(f"Invalid model_name passed - face_detector/{detector_backend}")
        # align: the toolkit never aligns (align=False is what happens); 'opencv' is the default, 'yunet' and
        # 'skip' are what happens: only the other detectors and an expansion are settings without effect.
        ignored = [] if detector_backend in ("opencv", "yunet", "skip") else [f"detector_backend={detector_backend!r}"]
        if expand_percentage:
            ignored.append(f"expand_percentage={expand_percentage!r}")
        if ignored and not silent:
            note_once("deepface", f"fer_common.compat.deepface: {', '.join(ignored)}: no effect, this toolkit's "
                                  f"face detector (yunet) finds the faces, framed as its model expects them")
        fer = _model()
        image = peer_image(img_path, ImgNotFound)
        with errors_as(ImgNotFound):
            faces = fer.analyse(image, detect=detector_backend != "skip")
            if not faces and not enforce_detection:
                faces = fer.analyse(image, detect=False)         # the whole image is the face (score None: 0)
        if not faces:
            raise FaceNotDetected(f"Face could not be detected in {_input_name(img_path)}. Please confirm that the "
                                  f"picture is a face photo or consider to set enforce_detection param to False.")
        names = peer_names(fer.class_names)
        return [_face(face, names) for face in faces]
