"""The Python API: the objects the scripts use, behind one small class.

    from fer_common import FER

    fer = FER()                                       # the shipped model and face detector, loaded once
    for face in fer.analyse("photo.jpg"):             # a path, a BGR/gray/BGRA array, or a PIL image
        print(face.box, face.score, face.top_emotion, face.confidence, face.probabilities["Happy"])

    result = fer.analyse_image("photo.jpg")           # the whole Result: source, size, faces, error
    print(result.to_json())

    for result in fer.analyse_video("clip.mp4"):      # a generator of Results, one per frame (frame, time)
        ...
    for result in fer.analyse_folder("crops/", detect=False):     # bulk: batched, threaded, in order
        ...
    table = to_dataframe(fer.analyse_folder("photos/"))           # fer_common.results: one row per face

Nothing here is a second code path: `analyse_image` is fer_common.infer.bulk's analyse_images, which
inference.py runs on folders too; `analyse_folder` is fer_common.infer.bulk (inference.py FOLDER), `analyse_video` is fer_common.video.pipeline's analyse_frames without the frames
(real_time_video.py), and every result is a fer_common.results.Result.

Threads: one FER object may be shared by several threads. The ONNX Runtime session is safe to share; the
face detector (OpenCV's, which is not) is used under a lock, so threads that need detection in parallel are
faster with a FER object each.
"""

import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from fer_common.infer import bulk
from fer_common.infer.bulk import DEFAULT_BATCH_SIZE, decode_channels
from fer_common.infer.detection import FaceDetector
from fer_common.errors import FERError
from fer_common.infer.predictor import load_models, resolve_model_file
from fer_common.preprocess import read_image
from fer_common.results import Face, Result

ACCEPTED = "a path, a uint8 array (H x W gray, H x W x 3 BGR or H x W x 4 BGRA, as OpenCV gives them) or a PIL image"

__all__ = ["FER", "Face", "Result", "as_bgr"]


def as_bgr(image, channels: int = 3) -> tuple[np.ndarray, str]:
    """Any accepted image -> (uint8 BGR or gray array, a name for it). A file is decoded with `channels` (3:
    BGR; 1: gray, straight from the file). PIL images are converted by their mode (RGB, RGBA, L, P, CMYK,
    ...), so colours are never swapped."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FERError(f"image not found: {path}" if not path.exists() else f"not a regular file: {path}")
        array = read_image(path, channels, bgr=True)
        if array is None:
            raise FERError(f"cannot read {path} as an image")
        return array, str(path)
    if type(image).__module__.startswith("PIL."):
        mode = getattr(image, "mode", "")
        if mode in ("L", "1", "I", "I;16", "F"):
            return np.asarray(image.convert("L")), "image"
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]), "image"
    if not isinstance(image, np.ndarray):
        raise FERError(f"cannot analyse a {type(image).__name__}: give {ACCEPTED}")
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise FERError(f"cannot analyse a {image.dtype} array of shape {image.shape}: give {ACCEPTED}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise FERError(f"cannot analyse an empty image (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]                     # BGRA -> BGR: the alpha channel carries no face
    return np.ascontiguousarray(image), "image"


class FER:
    """Face detection and emotion recognition with one model, loaded once.

    model: a .pth or .onnx file of this toolkit, or several (an ensemble); default (None): the shipped int8
        model, never a file of the working folder.
    detector: 'yunet' (default), 'haar', or None (every image is already one face crop).
    tta: average each face with its mirror image (on by default, as in inference.py); or a number of views to
        average (4 or 10: fer_common.infer.tta; 10 gains about 0.7 points of accuracy for 5x the classifier's time).
    device: 'auto', 'cpu', 'cuda', ... for .pth models; ONNX models pick their provider automatically.
    """

    def __init__(self, model=None, detector: str | None = "yunet", tta: bool = True, device: str = "auto"):
        paths = model if isinstance(model, (list, tuple)) else [model]
        if not paths:
            raise FERError("model=[]: give a model file, several, or None for the shipped model")
        # resolve_model_file's rule, without a folder of its own: a named file or short name, else the shipped model
        files = [resolve_model_file(checkpoint=p, here=None)[0] for p in paths]
        self.predictor = load_models(files, device=device, tta=tta)
        self.detector = FaceDetector(detector) if detector else None
        self._detect_lock = threading.Lock()

    def __repr__(self) -> str:
        detector = self.detector.kind if self.detector else None
        return f"FER(model={self.predictor.describe()!r}, detector={detector!r}, classes={self.class_names})"

    @property
    def class_names(self) -> list[str]:
        return list(self.predictor.class_names)

    def analyse_image(self, image, detect: bool = True) -> Result:
        """The Result for one image (see as_bgr for what is accepted): its faces, or `error` saying why none.

        detect=False (or no detector) classifies the whole image as one face crop. The same steps as a folder
        (fer_common.infer.bulk.analyse_images), so a file gives the same numbers here as in inference.py.
        """
        return self.analyse_images([image], detect)[0]

    def analyse_images(self, images, detect: bool = True, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Result]:
        """A Result for each image of a list (each as analyse_image takes it), in order: the faces of all of
        them classified together, `batch_size` faces per forward pass."""
        detector = self.detector if detect else None
        channels = decode_channels(self.predictor, detector is not None)
        decoded = [as_bgr(image, channels) for image in images]
        return bulk.analyse_images(self.predictor, decoded, detector, batch_size=batch_size,
                                   detect_lock=self._detect_lock)

    def analyse(self, image, detect: bool = True) -> list[Face]:
        """The faces of one image, left to right (an empty list when there is none)."""
        return self.analyse_image(image, detect).faces

    analyze = analyse
    analyze_image = analyse_image
    analyze_images = analyse_images

    def analyse_video(self, source, detect_every: int = 3, smooth: float = 0.5,
                      max_frames: int | None = None) -> Iterator[Result]:
        """A Result for each frame of a video file (path) or webcam (int, 0 and up), as real_time_video.py sees
        them: detection every `detect_every` frames with tracking between, probabilities smoothed per face
        (`smooth` = 0 turns it off). Each Face has its track id, the same for a face across frames."""
        from fer_common.video.pipeline import analyse_frames

        if self.detector is None:
            raise FERError("video analysis needs a face detector: FER(detector='yunet')")
        # A detector of its own: the pipeline runs it on a thread while this object may serve other threads.
        frames = analyse_frames(source, self.predictor, FaceDetector(self.detector.kind), detect_every=detect_every,
                                smooth=smooth, max_frames=max_frames)
        for _, result in frames:
            yield result

    analyze_video = analyse_video

    def analyse_folder(self, folder, detect: bool = True, recursive: bool = False) -> Iterator[Result]:
        """A Result for every image of a folder, in sorted order; an unreadable image is one with `error`."""
        from fer_common.infer.bulk import analyse_folder

        detector = (lambda: FaceDetector(self.detector.kind)) if detect and self.detector is not None else None
        yield from analyse_folder(folder, self.predictor, detector, recursive=recursive)

    analyze_folder = analyse_folder
