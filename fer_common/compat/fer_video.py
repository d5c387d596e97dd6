"""fer's Video on this toolkit: each frame of a file analysed as FER.detect_emotions analyses an image.

    video = Video("clip.mp4")                              # from fer_common.compat.fer import FER, Video
    raw = video.analyze(FER(), display=False, max_results=60)   # fer's list: one row per frame with a face
    df = video.to_pandas(raw)                              # box, angry, ..., neutral of the first face (pandas)
    emotions = video.get_emotions(df)

As fer 25.10: analyze's keywords and what it returns (output='csv': one dict per frame that has a face,
{'box0': [...], 'angry0': ..., 'box1': ...}, also written to data.csv in the working folder; 'pandas': a
DataFrame), frequency / save_fps / max_results / detection_box / batch_size, and its files in `outdir`: the
annotated video <name>_output<ext> and one JPEG per analysed frame (<name><frame>.jpg), zipped into images.zip.
Frames are analysed one by one, as fer does (no tracking or smoothing: that is fer_common.FER.analyse_video),
and drawn with this toolkit's overlay (fer's lang, size_multiplier and include_audio have nothing to act on:
noted once). Every file is written whole or not at all; only this run's frames go into images.zip.
"""

import csv
import itertools
import math
import os
import re
import zipfile
from dataclasses import replace
from pathlib import Path

from fer_common.compat.common import changed, note_once
from fer_common.errors import FERError
from fer_common.files import atomic_path, write_image
from fer_common.results import require_pandas
from fer_common.video.run import run_video
from fer_common.video.sinks import Annotator, Sink, VideoFile
from fer_common.video.source import VideoReader
from fer_common.video.window import Window

# analyze's keywords that only shape fer's own drawing and audio, and their defaults.
DRAWING_DEFAULTS = {"lang": "en", "include_audio": False, "size_multiplier": 1}


class FrameFiles(Sink):
    """Each frame as <folder>/<prefix><frame>.jpg (fer's save_frames); `paths` lists those written."""

    def __init__(self, folder, prefix: str):
        self.folder, self.prefix, self.paths = Path(folder), prefix, []

    def write(self, frame, result, fps=None) -> None:
        path = self.folder / f"{self.prefix}{result.frame}.jpg"
        write_image(path, frame)
        self.paths.append(path)


class Video:
    """A video file to analyse with a fer_common.compat.fer.FER (fer's Video; its constructor's keywords)."""

    def __init__(self, video_file: str, outdir: str = "output", first_face_only: bool = True, tempfile=None):
        if not os.path.isfile(video_file):
            raise FERError(f"video not found: {video_file}")
        self.filepath = str(video_file)
        self.filename = os.path.basename(self.filepath)
        self.outdir = str(outdir)           # made when the first file is written there, not here
        self.first_face_only = first_face_only
        self.tempfile = tempfile            # fer writes the video there first; here every file is atomic anyway

    def analyze(self, detector, display: bool = False, output: str = "csv", frequency: int | None = None,
                max_results: int | None = None, save_fps: int | None = None, video_id: str | None = None,
                save_frames: bool = True, save_video: bool = True, annotate_frames: bool = True,
                zip_images: bool = True, detection_box: dict | None = None, lang: str = "en",
                include_audio: bool = False, size_multiplier: int = 1, batch_size: int = 1,
                use_async_io: bool = True) -> list:
        """The faces of every `frequency`-th frame (or `save_fps` frames a second), at most `max_results`
        frames, in fer's format (see the module). detection_box {'x_min', 'x_max', 'y_min', 'y_max'}: faces
        are looked for in that part of each frame, boxes in the frame's coordinates. display shows the frames
        (q or Esc stops); batch_size frames are analysed together; use_async_io has nothing to do here."""
        if output not in ("csv", "pandas"):
            raise FERError(f"output must be 'csv' or 'pandas', got {output!r}")
        if not callable(getattr(detector, "results", None)):
            raise FERError("Video.analyze needs a fer_common.compat.fer.FER as its detector")
        ignored = changed(dict(lang=lang, include_audio=include_audio, size_multiplier=size_multiplier),
                          DRAWING_DEFAULTS)
        if ignored:
            note_once("fer.Video", f"fer_common.compat.fer.Video.analyze: {', '.join(ignored)}: no effect, "
                                   f"frames are drawn with this toolkit's overlay, without sound")
        reader = VideoReader(self.filepath)
        try:
            step = max(1, int(reader.fps // save_fps)) if save_fps else int(frequency or 1)
            if step < 1:
                raise FERError(f"frequency must be 1 or more, got {frequency}")
            root, ext = os.path.splitext(self.filename)
            frame_files = FrameFiles(self.outdir, video_id or root) if save_frames else None
            sinks = []
            if annotate_frames and (save_video or save_frames or display):
                sinks.append(Annotator(detector.fer.class_names))
            if save_video:
                sinks.append(VideoFile(Path(self.outdir) / f"{root}_output{ext or '.mp4'}", reader.fps / step,
                                       reader.size))
            if frame_files is not None:
                sinks.append(frame_files)
            if display:
                sinks.append(Window())
            total = math.ceil(reader.total / step) if reader.total else None
            if max_results:
                total = min(total or max_results, max_results)
            results = []
            run_video(self._analysed(reader, detector, step, max_results, detection_box, max(1, int(batch_size)),
                                     results), sinks, total=total)
        finally:
            reader.close()
        if frame_files is not None and zip_images and frame_files.paths:
            self._zip(frame_files.paths, Path(self.outdir) / "images.zip")
        frames = [[detector.to_fer(face) for face in r.faces] for r in results if r.faces]
        return self.to_format(frames, output)

    @staticmethod
    def _analysed(reader, detector, step, max_results, detection_box, batch_size, results):
        """(frame, Result) of each analysed frame, in order, each Result also appended to `results`."""
        chosen = ((k, frame) for k, frame in enumerate(reader) if k % step == 0)
        if max_results:
            chosen = itertools.islice(chosen, int(max_results))
        batch = []
        for item in chosen:
            batch.append(item)
            if len(batch) == batch_size:
                yield from _analyse_batch(batch, reader, detector, detection_box or {}, results)
                batch = []
        if batch:
            yield from _analyse_batch(batch, reader, detector, detection_box or {}, results)

    @staticmethod
    def _zip(paths, path) -> None:
        """The frames into one zip (fer's zip_images), the JPEGs removed once it is complete."""
        with atomic_path(path, suffix=".zip") as tmp:
            with zipfile.ZipFile(tmp, "w") as archive:
                for p in paths:
                    archive.write(p, arcname=p.name)
        for p in paths:
            p.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ fer's table views

    @staticmethod
    def get_max_faces(data: list) -> int:
        """The most faces in one frame of analyze's per-frame face lists."""
        return max((len(frame) for frame in data), default=0)

    @staticmethod
    def _to_dict(data) -> list[dict]:
        """Per-frame face lists -> one row per frame: box0, angry0, ..., box1, angry1, ... (rows stay rows)."""
        if not len(data) or isinstance(data[0], dict):
            return list(data)
        emotions = list(data[0][0]["emotions"])
        rows = []
        for frame in data:
            row = {}
            for i, face in enumerate(frame):
                row[f"box{i}"] = face["box"]
                row.update({f"{name}{i}": face["emotions"][name] for name in emotions})
            rows.append(row)
        return rows

    def to_csv(self, data, filename: str = "data.csv") -> list[dict]:
        """The rows (see _to_dict) written to `filename`, columns by name then face (angry0, angry1, box0, ...)."""
        rows = self._to_dict(data)
        columns = sorted(set().union(*(row.keys() for row in rows)), key=_column_key)
        with atomic_path(filename, suffix=".csv") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
        return rows

    def to_pandas(self, data):
        """The rows as a DataFrame (the first face's columns only, named box, angry, ..., with first_face_only)."""
        pd = require_pandas()
        if isinstance(data, pd.DataFrame):
            return data
        if not len(data):
            return pd.DataFrame()
        df = pd.DataFrame(self._to_dict(data))
        return self.get_first_face(df) if self.first_face_only else df

    @staticmethod
    def get_first_face(df):
        """The first face's columns (box0, angry0, ...) renamed box, angry, ...; a one-face table as it is."""
        columns = [c for c in df.columns if re.fullmatch(r".*\D0", str(c))]
        if not columns:
            return df
        single = df[columns].copy()
        single.columns = [c[:-1] for c in columns]
        return single

    @staticmethod
    def get_emotions(df):
        """The table without its box columns."""
        return df[[c for c in df.columns if "box" not in c]]

    def to_format(self, data, format: str):
        """analyze's per-frame face lists as `format`: 'csv' (rows, also written to data.csv) or 'pandas'."""
        return {"csv": self.to_csv, "pandas": self.to_pandas}[format](data)


def _analyse_batch(batch, reader, detector, box: dict, results):
    """Analyse (index, frame) pairs together, inside detection_box `box` when given; (frame, Result) each."""
    x0, y0 = box.get("x_min") or 0, box.get("y_min") or 0
    crops = [frame[box.get("y_min"):box.get("y_max"), box.get("x_min"):box.get("x_max")] for _, frame in batch]
    for (k, frame), r in zip(batch, detector.results(crops)):
        faces = [replace(f, box=(f.box[0] + x0, f.box[1] + y0, f.box[2], f.box[3])) for f in r.faces]
        r = replace(r, source=reader.name, faces=faces, size=reader.size, frame=k, time=k / reader.fps, error=None)
        results.append(r)
        yield frame, r


def _column_key(column: str):
    """'angry12' -> ('angry', 12): fer sorts its CSV columns by name, then face."""
    match = re.fullmatch(r"(.*?)(\d+)", column)
    return (match.group(1), int(match.group(2))) if match else (column, -1)
