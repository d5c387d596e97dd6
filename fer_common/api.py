"""The Python API: the objects the scripts use, behind one small class.

    from fer_common import FER

    fer = FER()                                       # the shipped model and face detector, loaded once
    for face in fer.analyse("photo.jpg"):             # a file, or a BGR image from OpenCV
        print(face.box, face.top_emotion, face.probabilities["Happy"], face.embedding.shape)

    for frame_index, faces in fer.analyse_video("clip.mp4"):      # a generator, one item per frame
        ...

    for path, faces in fer.analyse_folder("crops/", detect=False):  # bulk: batched, threaded, in order
        ...

Nothing here is a second code path: `analyse` is the detector and Predictor that inference.py uses,
`analyse_folder` is fer_common.bulk (inference.py FOLDER), `analyse_video` is fer_common.video's pipeline
(real_time_video.py).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import FERError
from .detection import FaceDetector, crop_faces
from .preprocess import read_image


@dataclass
class Face:
    """One face: where it is, what the model says about it, and its embedding."""
    box: tuple                 # (x, y, w, h) in the image's pixels (the crop the model saw)
    probabilities: dict        # class name -> probability, in the model's class order; they sum to 1
    embedding: np.ndarray      # the model's face embedding (128-d for the shipped model)
    track_id: int | None = None  # in a video: the same number for the same face across frames

    @property
    def top_emotion(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


class FER:
    """Face detection and emotion recognition with one model, loaded once.

    model: a .pth or .onnx file of this toolkit, or several (an ensemble); default: the shipped int8 model.
    detector: 'yunet' (default), 'haar', or None (every image is already one face crop).
    tta: average each face with its mirror image (on by default, as in inference.py).
    device: 'auto', 'cpu', 'cuda', ... for .pth models; ONNX models pick their provider automatically.
    """

    def __init__(self, model=None, detector: str | None = "yunet", tta: bool = True, device: str = "auto"):
        from .predictor import Ensemble, Predictor, resolve_model_file

        paths = model if isinstance(model, (list, tuple)) else [model]
        files = [resolve_model_file("default", p, fast=True) if p is None else Path(p) for p in paths]
        for f in files:
            if not f.is_file():
                raise FERError(f"model file not found: {f}")
        members = [Predictor(f, device=device, tta=tta) for f in files]
        self.predictor = members[0] if len(members) == 1 else Ensemble(members)
        self.detector = FaceDetector(detector) if detector else None

    @property
    def class_names(self) -> list:
        return list(self.predictor.class_names)

    def _faces(self, boxes, prediction) -> list:
        return [Face(tuple(int(v) for v in box), dict(zip(self.class_names, map(float, p))), e)
                for box, p, e in zip(np.asarray(boxes).reshape(-1, 4), prediction.probabilities, prediction.embeddings)]

    def analyse(self, image, detect: bool = True) -> list:
        """The faces in one image: a file path, or a BGR (or gray) uint8 array as OpenCV gives it.

        detect=False (or no detector) classifies the whole image as one face crop.
        """
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise FERError(f"image not found: {path}")
            rgb = read_image(path, 3)
            if rgb is None:
                raise FERError(f"cannot read {path} as an image")
            image = np.ascontiguousarray(rgb[:, :, ::-1])          # RGB -> BGR, as OpenCV frames are
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise FERError(f"expected a uint8 image (H x W or H x W x 3), got {image.dtype} {image.shape}")
        if detect and self.detector is not None:
            boxes = self.detector.detect(image)
            crops = crop_faces(image, boxes)
        else:
            boxes = np.array([[0, 0, image.shape[1], image.shape[0]]])
            crops = [image]
        return self._faces(boxes, self.predictor.predict(crops, bgr=True))

    def analyse_video(self, source, detect_every: int = 3, smooth: float = 0.5,
                      max_frames: int | None = None) -> Iterator[tuple]:
        """(frame index, faces) for each frame of a video file (path) or webcam (int), as real_time_video.py sees
        them: detection every `detect_every` frames with tracking between, probabilities smoothed per face
        (`smooth` = 0 turns it off). Each Face also has its track id, the same for a face across frames."""
        from .video import analyse_video

        if self.detector is None:
            raise FERError("video analysis needs a face detector: FER(detector='yunet')")
        for _, result in analyse_video(source, self.predictor, self.detector, detect_every=detect_every,
                                       smooth=smooth, max_frames=max_frames):
            faces = self._faces(result.boxes, result)
            for face, track in zip(faces, result.ids):
                face.track_id = int(track)
            yield result.index, faces

    def analyse_folder(self, folder, detect: bool = True, recursive: bool = False) -> Iterator[tuple]:
        """(image path, faces) for every image of a folder, in sorted order; unreadable images give no faces."""
        from .bulk import analyse_folder

        detector = (lambda: FaceDetector(self.detector.kind)) if detect and self.detector is not None else None
        for result in analyse_folder(folder, self.predictor, detector, recursive=recursive):
            yield result.image, self._faces(result.boxes, result)
