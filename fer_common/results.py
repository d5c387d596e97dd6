"""One result model for every path: a Face, and a Result for one image or video frame with its faces.

    result = fer.analyse_image("photo.jpg")          # a Result
    result.faces[0].top_emotion, result.faces[0].confidence, result.faces[0].box
    result.to_dict()                                 # JSON-ready (embeddings as lists)
    to_table(results)                                # one row (dict) per face; to_dataframe(results) with pandas

Images, folders (fer_common.infer.bulk), video frames (fer_common.video.pipeline) and the Python API all make their results
with `make_result`, and every output is a view of them: `to_dict` is what --json and .jsonl files hold,
`table_rows` what .csv files and tables hold (the same columns everywhere). An image without a face, or one
that could not be read, is a Result too, with `error` saying why, so counts always add up.
"""

import json
import math
from dataclasses import dataclass, field

import numpy as np

from fer_common.errors import FERError
from fer_common.files import printable

NO_FACE = "no face found"
UNREADABLE = "cannot decode"
# Probabilities and embeddings are written with this many decimals (float32 carries about 7 digits).
DECIMALS = 6


@dataclass
class Face:
    """One face: where it is, how sure the detector was, and what the model says about it."""
    box: tuple[int, int, int, int]          # (x, y, w, h) in the image's pixels: the crop the model saw
    probabilities: dict[str, float]         # class name -> probability, in the model's class order; sum 1
    score: float | None = None              # the detector's confidence; None when the image was the face
    embedding: np.ndarray | None = None     # the model's face embedding (128-d for the shipped model)
    track_id: int | None = None             # in a video: the same number for the same face across frames

    @property
    def top_emotion(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def confidence(self) -> float:
        """The top emotion's probability."""
        return self.probabilities[self.top_emotion]

    def __repr__(self) -> str:
        # what a person reads: not the 128 embedding floats (face.embedding has them)
        parts = [f"box={tuple(int(v) for v in self.box)}", f"top_emotion={self.top_emotion!r}",
                 f"confidence={float(self.confidence):.3f}"]
        if self.score is not None:
            parts.append(f"score={float(self.score):.3f}")
        if self.track_id is not None:
            parts.append(f"track_id={self.track_id}")
        if self.embedding is not None:
            parts.append(f"embedding=<{np.asarray(self.embedding).shape[0]} floats>")
        return f"Face({', '.join(parts)})"

    def to_dict(self, embedding: bool = True) -> dict:
        d = {"box": [int(v) for v in self.box], "score": _number(self.score),
             "top_emotion": self.top_emotion, "confidence": round(float(self.confidence), DECIMALS),
             "probabilities": {k: round(float(v), DECIMALS) for k, v in self.probabilities.items()}}
        if self.track_id is not None:
            d["track_id"] = int(self.track_id)
        if embedding and self.embedding is not None:
            d["embedding"] = np.round(np.asarray(self.embedding, np.float64), DECIMALS).tolist()
        return d


@dataclass
class Result:
    """One image or one video frame: where it came from, its size, its faces, and `error` (None, or why there
    is no face: NO_FACE, UNREADABLE, ...)."""
    source: str                             # the image's path, or the video's (a camera: "camera 0")
    faces: list[Face] = field(default_factory=list)
    size: tuple[int, int] | None = None     # (width, height); None when the image could not be read
    error: str | None = None
    frame: int | None = None                # video: the frame's index from 0
    time: float | None = None               # video: seconds from the start
    index: int = 0                          # position in the input list (for ordering; not exported)
    # video: milliseconds per stage of this frame (detect, classify, track), as Ultralytics' Results.speed;
    # a measurement, not a result: not exported
    speed: dict | None = field(default=None, repr=False, compare=False)

    def to_dict(self, embedding: bool = True) -> dict:
        d = {"source": printable(self.source)}       # a name that is not UTF-8: its bytes escaped (\xff.jpg)
        if self.frame is not None:
            d["frame"], d["time"] = self.frame, _number(self.time)
        d["size"] = list(self.size) if self.size else None
        d["error"] = self.error
        d["faces"] = [f.to_dict(embedding) for f in self.faces]
        return d

    def to_json(self, embedding: bool = True) -> str:
        return json.dumps(self.to_dict(embedding), allow_nan=False, separators=(",", ":"))


def _number(value):
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS)


def make_result(source, class_names, boxes=(), probabilities=(), embeddings=None, scores=None, track_ids=None,
                size=None, error=None, frame=None, time=None, index=0, no_face_error: bool = True) -> Result:
    """The one place a Result is made, from a model's arrays: K boxes (x, y, w, h), K x classes probabilities,
    optional K x D embeddings, K detection scores and K track ids. It takes every field of a Result and a Face
    (with defaults), hence its many parameters. `error` defaults to NO_FACE when K is 0 (no_face_error=False
    leaves it None: a video frame without a face is not a failure)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    probabilities = np.asarray(probabilities, np.float64).reshape(len(boxes), len(class_names))
    names = list(class_names)
    faces = []
    for i, box in enumerate(boxes.tolist()):
        faces.append(Face(tuple(int(v) for v in box), dict(zip(names, probabilities[i].tolist())),
                          None if scores is None else float(scores[i]),
                          None if embeddings is None else np.asarray(embeddings[i]),
                          None if track_ids is None else int(track_ids[i])))
    if error is None and not faces and no_face_error:
        error = NO_FACE
    return Result(str(source), faces, None if size is None else (int(size[0]), int(size[1])), error,
                  frame, time, index)


# ------------------------------------------------------------------------------------------------ tables

INTEGER_COLUMNS = ("frame", "width", "height", "face", "faces", "x", "y", "w", "h", "track_id")


def table_columns(class_names) -> list[str]:
    """The columns of a results table and of every .csv the toolkit writes: one row per face."""
    return ["source", "frame", "time", "width", "height", "face", "faces", "x", "y", "w", "h", "score",
            "track_id", "top_emotion", "confidence", *class_names, "error"]


def table_rows(result: Result, class_names) -> list[list]:
    """A Result as table rows: one per face (face numbered from 1, as drawn), or one row with only the image's
    columns and its error when it has no face. `faces` is the image's face count, so a reader can tell a
    complete image from one cut short."""
    width, height = result.size if result.size else (None, None)
    head = [printable(result.source), result.frame, _number(result.time), width, height]
    if not result.faces:
        return [head + [None, 0] + [None] * (8 + len(class_names)) + [result.error]]
    rows = []
    for i, f in enumerate(result.faces, 1):
        probs = [round(float(f.probabilities[c]), DECIMALS) for c in class_names]
        rows.append(head + [i, len(result.faces), *f.box, _number(f.score), f.track_id,
                            f.top_emotion, round(float(f.confidence), DECIMALS), *probs, result.error])
    return rows


def probability_matrix(result: Result, class_names) -> np.ndarray:
    """K x classes float64 probabilities of a Result's faces, columns in `class_names` order."""
    return np.array([[f.probabilities[c] for c in class_names] for f in result.faces], np.float64).reshape(-1, len(class_names))


def to_table(results, class_names=None) -> list[dict]:
    """Results as row dicts (column -> value, None where blank), one per face: the columns of table_columns."""
    results = list(results)
    names = list(class_names) if class_names else next((list(r.faces[0].probabilities) for r in results if r.faces), [])
    columns = table_columns(names)
    return [dict(zip(columns, row)) for r in results for row in table_rows(r, names)]


def require_pandas():
    """pandas, or one FERError line naming the extra that installs it (every table the toolkit makes needs it)."""
    try:
        import pandas as pd
    except ImportError:
        raise FERError("a results table needs pandas: pip install 'fer-toolkit[table]'") from None
    return pd


def to_dataframe(results, class_names=None):
    """Results as a pandas DataFrame, one row per face, the columns of table_columns (needs pandas:
    pip install 'fer-toolkit[table]')."""
    pd = require_pandas()
    rows = to_table(results, class_names)
    table = pd.DataFrame(rows, columns=list(rows[0]) if rows else table_columns(class_names or []))
    # integers stay integers where an image without a face leaves a cell blank (pandas' nullable Int64, not float)
    return table.astype({name: "Int64" for name in INTEGER_COLUMNS})
