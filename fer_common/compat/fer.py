"""The `fer` package's FER and Video, answered by this toolkit: code written for fer runs with one changed import.

    from fer import FER, Video        ->   from fer_common.compat.fer import FER, Video
    from fer.exceptions import InvalidImage   ->   from fer_common.compat.fer import InvalidImage

    detector = FER()
    detector.detect_emotions("photo.jpg")    # [{'box': [x, y, w, h], 'emotions': {'angry': 0.01, ...}}]
    detector.top_emotion("photo.jpg")        # ('happy', 0.9), or (None, None) without a face

As fer 25.10: the constructor's keywords, checked as fer checks them; detect_emotions of a path, a BGR or gray
array or a base64 data URI (and of given face_rectangles); top_emotion, batch_detect_emotions, find_faces;
the result's shape, fer's names and its rounding (two decimals); InvalidImage for what is no readable image.
The answers are this toolkit's: its face detector (YuNet) and model (the shipped one unless `model=`), each box
the square crop the model saw (FER-2013 framing, not fer's tighter Haar box). fer's detector and model
settings (mtcnn, cascade_file, scale_factor, ...) have nothing to act on here: given, they are noted once.
A URL is not fetched (the toolkit runs offline).
"""

from fer_common.api import FER as ToolkitFER
from fer_common.api import as_bgr
from fer_common.compat.common import changed, errors_as, note_once, peer_image, peer_names
from fer_common.compat.fer_video import Video
from fer_common.errors import FERError
from fer_common.infer.bulk import DEFAULT_BATCH_SIZE
from fer_common.results import Face, Result

__all__ = ["FER", "InvalidImage", "Video"]

# fer 25.10's constructor keywords and their defaults: settings of its Haar/MTCNN detector and Keras model.
FER_DEFAULTS = {"cascade_file": None, "mtcnn": False, "tfserving": False, "use_tflite": True, "scale_factor": 1.1,
                "min_face_size": 50, "min_neighbors": 5, "offsets": (10, 10)}
DECIMALS = 2        # fer rounds each score: round(float(score), 2)


class InvalidImage(FERError):
    """An input that is no readable image (fer.exceptions.InvalidImage); a FERError too, told in one line."""


class FER:
    """fer's FER on this toolkit's detector and model.

    The first eight keywords are fer's (checked as fer checks them; without effect here, noted once when given).
    Keyword-only, the toolkit's own choices (fer_common.FER): model (a .pth/.onnx file or several; None: the
    shipped model), detector ('yunet', 'haar'), tta, device. `fer` is the fer_common.FER underneath.
    """

    def __init__(self, cascade_file: str = None, mtcnn=False, tfserving: bool = False, use_tflite: bool = True,
                 scale_factor: float = 1.1, min_face_size: int = 50, min_neighbors: int = 5,
                 offsets: tuple = (10, 10), *, model=None, detector: str = "yunet", tta: bool = True,
                 device: str = "auto"):
        if scale_factor <= 1.0:
            raise ValueError("scale_factor must be greater than 1.0")
        if min_face_size < 1:
            raise ValueError("min_face_size must be at least 1")
        if min_neighbors < 0:
            raise ValueError("min_neighbors must be non-negative")
        if not isinstance(offsets, (tuple, list)) or len(offsets) != 2:
            raise ValueError("offsets must be a tuple or list of length 2")
        if not detector:
            raise FERError("fer's FER finds faces: give detector='yunet' or 'haar'")
        self.fer = ToolkitFER(model, detector=detector, tta=tta, device=device)
        self.names = peer_names(self.fer.class_names)        # toolkit class name -> fer's name, in fer's order
        settings = dict(cascade_file=cascade_file, mtcnn=mtcnn, tfserving=tfserving, use_tflite=use_tflite,
                        scale_factor=scale_factor, min_face_size=min_face_size, min_neighbors=min_neighbors,
                        offsets=offsets)
        ignored = changed(settings, FER_DEFAULTS)
        if ignored:
            note_once("fer", f"fer_common.compat.fer.FER: {', '.join(ignored)}: no effect, this toolkit's face "
                             f"detector ({detector}) and model answer, not fer's")

    def __repr__(self) -> str:
        return f"fer_common.compat.fer.FER({self.fer!r})"

    def _get_labels(self) -> dict[int, str]:
        """fer's index -> name table (fer's Video reads it), in the order of the emotions dicts."""
        return dict(enumerate(self.names.values()))

    def to_fer(self, face: Face, box=None) -> dict:
        """One toolkit Face as fer gives a face: its box and its scores under fer's names, rounded as fer does."""
        box = face.box if box is None else box
        scores = {peer: round(float(face.probabilities[name]), DECIMALS) for name, peer in self.names.items()}
        return {"box": [int(v) for v in box], "emotions": scores}

    def results(self, images, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Result]:
        """The toolkit's Result of each image (as detect_emotions takes them), faces classified in batches: what
        detect_emotions formats. InvalidImage names an input that is no readable image."""
        images = [peer_image(img, InvalidImage) for img in images]
        with errors_as(InvalidImage):
            return self.fer.analyse_images(images, batch_size=batch_size)

    def detect_emotions(self, img, face_rectangles=None) -> list[dict]:
        """Every face of an image (a path, a BGR or gray numpy array, or a base64 data URI), left to right, as
        [{'box': [x, y, w, h], 'emotions': {'angry': ..., 'neutral': ...}}]; [] without a face.

        face_rectangles: [x, y, w, h] boxes to classify instead of detecting (each crop as given, clipped to
        the image; one wholly outside it is skipped, as fer skips a crop it cannot resize)."""
        if face_rectangles is None:
            emotions = [self.to_fer(face) for face in self.results([img])[0].faces]
        else:
            emotions = self._classify_rectangles(img, face_rectangles)
        self.emotions = emotions              # fer keeps the last answer here too
        return emotions

    def _classify_rectangles(self, img, face_rectangles) -> list[dict]:
        with errors_as(InvalidImage):
            image, _ = as_bgr(peer_image(img, InvalidImage))
        height, width = image.shape[:2]
        crops, boxes = [], []
        for box in face_rectangles:
            x, y, w, h = (int(v) for v in box)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
            if x1 > x0 and y1 > y0:
                crops.append(image[y0:y1, x0:x1])
                boxes.append((x, y, w, h))
        if not crops:
            return []
        results = self.fer.analyse_images(crops, detect=False)
        return [self.to_fer(r.faces[0], box) for r, box in zip(results, boxes)]

    def batch_detect_emotions(self, imgs, batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[dict]]:
        """detect_emotions of each image, in order: one list of faces per image. The faces of all images are
        classified together, `batch_size` faces per forward pass."""
        imgs = list(imgs)
        if not imgs:
            return []
        return [[self.to_fer(face) for face in r.faces] for r in self.results(imgs, batch_size)]

    def top_emotion(self, img) -> tuple[str | None, float | None]:
        """(name, score) of the first face's top emotion, from detect_emotions' rounded scores (as fer), or
        (None, None) without a face."""
        emotions = self.detect_emotions(img)
        if not emotions:
            return None, None
        scores = emotions[0]["emotions"]
        top = max(scores, key=lambda name: scores[name])
        return top, scores[top]

    def find_faces(self, img, bgr: bool = True) -> list[list[int]]:
        """The faces' boxes [x, y, w, h], left to right (the boxes detect_emotions gives; `bgr` is fer's and
        has nothing to do: the toolkit tells gray from colour by the array's shape)."""
        return [[int(v) for v in face.box] for face in self.results([img])[0].faces]
