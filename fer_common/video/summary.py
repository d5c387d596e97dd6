"""Per-face summaries of a video: when each tracked face was seen, the share of its frames each class was on
top, its dominant class; and a plot of its probabilities over time. Built from the video pipeline's results
as they come, or afterwards from a real_time_video.py --log_csv file (the same numbers: the log holds the
same smoothed probabilities and top classes).

    summary = FaceSummary(predictor.class_names)
    for frame, result in analyse_frames("clip.mp4", predictor, detector):
        summary.add_result(result)
    print(summary.table())
    write_json("summary.json", summary.to_dict())
    plot_summary(summary, "faces.png")              # needs matplotlib: pip install 'fer-toolkit[plot]'

    summary = summarise_csv("faces.csv")           # the same from a log, without the video
"""

import csv
from array import array
from dataclasses import dataclass

import numpy as np

from fer_common.errors import FERError
from fer_common.results import probability_matrix, table_columns
from fer_common.files import atomic_path

MATPLOTLIB_MISSING = "--plot needs matplotlib, which is not installed here: pip install 'fer-toolkit[plot]'"
MAX_PLOT_FACES = 12      # the faces seen longest; more panels would make a poster, not a figure


@dataclass
class FaceStats:
    face_id: int
    first_s: float           # time of the first frame the face was in (seconds)
    last_s: float            # ... and of the last
    frames: int              # frames it was in
    shares: dict             # class name -> share of those frames with this class on top (they sum to 1)
    dominant: str            # the class on top most often (the first in class order on a tie)

    def to_dict(self) -> dict:
        return {"face_id": self.face_id, "first_seen_s": round(self.first_s, 4), "last_seen_s": round(self.last_s, 4),
                "frames": self.frames, "dominant_emotion": self.dominant,
                "emotion_shares": {k: round(v, 4) for k, v in self.shares.items()}}


class FaceSummary:
    """Collects, per face id, the time, probabilities and top class of every frame the face was in.

    Also a sink of fer_common.video.run_video (write(frame, result, fps)): it only reads the results.
    """

    stop = False

    def __init__(self, class_names):
        self.class_names = list(class_names)
        self.source = None          # the video the faces were seen in (a log says which: its source column)
        # face id -> (times, probabilities row after row, top class indices): flat typed arrays, 40 bytes a
        # face-frame for seven classes, so a long video's summary stays small (30,000 frames: about 2 MB)
        self._rows = {}

    def add(self, face_id: int, time_s: float, probabilities, top: int | None = None) -> None:
        """One face in one frame; `top` is the class shown on top (default: the most probable). The time must
        be a finite number (the JSON summary is strict JSON: no NaN or Infinity)."""
        if not np.isfinite(time_s):
            raise FERError(f"face {face_id}: time {time_s} is not a finite number of seconds")
        probabilities = np.asarray(probabilities, np.float32).reshape(-1)
        if len(probabilities) != len(self.class_names):
            raise FERError(f"face {face_id}: {len(probabilities)} probabilities for {len(self.class_names)} classes")
        times, probs, tops = self._rows.setdefault(int(face_id), (array("d"), array("f"), array("i")))
        times.append(float(time_s))
        probs.frombytes(probabilities.tobytes())
        tops.append(int(np.argmax(probabilities)) if top is None else int(top))

    def add_result(self, result) -> None:
        """Every face of a video frame's Result (its track ids name the faces)."""
        self.source = self.source or result.source
        for face, p in zip(result.faces, probability_matrix(result, self.class_names)):
            self.add(face.track_id, result.time, p)

    def write(self, frame, result, fps=None) -> None:
        self.add_result(result)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def face_ids(self) -> list[int]:
        return sorted(self._rows)

    def series(self, face_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(times, probabilities): the face's frames in time order, T and T x num_classes."""
        times, probs, _ = self._rows[face_id]
        times = np.asarray(times, np.float64)
        order = np.argsort(times, kind="stable")
        return times[order], np.asarray(probs, np.float32).reshape(len(times), -1)[order]

    def faces(self) -> list[FaceStats]:
        out = []
        for face_id in self.face_ids:
            times, _, tops = self._rows[face_id]
            counts = np.bincount(np.asarray(tops, np.int64), minlength=len(self.class_names))
            shares = {name: float(c / len(tops)) for name, c in zip(self.class_names, counts)}
            out.append(FaceStats(face_id, min(times), max(times), len(times), shares,
                                 self.class_names[int(np.argmax(counts))]))
        return out

    def to_dict(self, source=None) -> dict:
        """The summary as JSON-ready data: the class names, and per face its times, frames, shares, dominant class.
        Every number is finite (times are checked as they come, shares are counts), so it is strict JSON."""
        return {**({"source": str(source)} if source is not None else {}), "class_names": self.class_names,
                "faces": [f.to_dict() for f in self.faces()]}

    def table(self) -> str:
        """One line per face: id, first and last time seen, frames, dominant class, share of each class."""
        faces = self.faces()
        if not faces:
            return "no faces found"
        widths = [max(len(n), 4) for n in self.class_names]
        dom = max([8] + [len(f.dominant) for f in faces])
        head = (f"{'face':>5}  {'seen (s)':>13}  {'frames':>6}  {'dominant':<{dom}}  "
                + "  ".join(f"{n:>{w}}" for n, w in zip(self.class_names, widths)))
        lines = [head]
        for f in faces:
            seen = f"{f.first_s:.2f}-{f.last_s:.2f}"
            lines.append(f"{'#' + str(f.face_id):>5}  {seen:>13}  {f.frames:>6}  {f.dominant:<{dom}}  "
                         + "  ".join(f"{f.shares[n]:>{w}.0%}" for n, w in zip(self.class_names, widths)))
        return "\n".join(lines)


MAX_TIME_S = 365 * 24 * 3600       # a year: a log's time past it is damage, and would break a plot's axis


def summarise_csv(path) -> FaceSummary:
    """The summary of a real_time_video.py --log_csv file (any class names: the columns between confidence and
    error, as in every results table: fer_common.results.table_columns)."""
    fixed = table_columns([])[:-1]                 # source ... confidence; then the classes, then error
    col = {name: k for k, name in enumerate(fixed)}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or header[:len(fixed)] != fixed or header[-1] != "error" or len(header) <= len(fixed) + 1:
                raise FERError(f"{path} is not a real_time_video.py --log_csv file (expected the columns "
                               f"{', '.join(fixed)}, one per class, error)")
            summary = FaceSummary(header[len(fixed):-1])
            index = {name: k for k, name in enumerate(summary.class_names)}
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise FERError(f"{path} line {line}: {len(row)} columns, the header has {len(header)}")
                if row[col["faces"]] == "0":
                    continue                        # a frame without a face
                try:
                    time_s, face_id = float(row[col["time"]]), int(row[col["track_id"]])
                    probabilities = [float(v) for v in row[len(fixed):-1]]
                except ValueError:
                    raise FERError(f"{path} line {line}: time, track_id or a probability is not a number") from None
                if not np.isfinite([time_s, *probabilities]).all():
                    raise FERError(f"{path} line {line}: time or a probability is not finite (NaN or infinity)")
                if not 0 <= time_s <= MAX_TIME_S:
                    raise FERError(f"{path} line {line}: time {time_s:g} s is not a time in a video (0 to a year)")
                if summary.source is None and row[col["source"]]:
                    summary.source = row[col["source"]]        # the video the log was written from
                top = row[col["top_emotion"]]
                if top not in index:
                    raise FERError(f"{path} line {line}: top_emotion '{top}' is none of the classes in the header")
                summary.add(face_id, time_s, probabilities, top=index[top])
    except FileNotFoundError:
        raise FERError(f"log not found: {path}") from None
    except UnicodeDecodeError:
        raise FERError(f"{path} is not a text CSV file (not UTF-8)") from None
    except csv.Error as e:
        raise FERError(f"{path} is not a readable CSV file ({e})") from None
    return summary


def require_matplotlib() -> None:
    """Fail in one line, before any work, when the optional matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FERError(MATPLOTLIB_MISSING) from None


def _rgb(name: str) -> tuple:
    from fer_common.infer.overlay import emotion_colour  # the colours of the on-screen bars

    b, g, r = emotion_colour(name)
    return (r / 255, g / 255, b / 255)


def _plain(text: str) -> str:
    """Text that matplotlib shows as written: `$` would start mathtext (a class named `$x^2$`, or an unbalanced
    `a$b` that crashes the plot)."""
    return str(text).replace("$", r"\$")


def plot_summary(summary: FaceSummary, path, title: str | None = None, max_faces: int = MAX_PLOT_FACES) -> None:
    """A PNG of each face's probabilities over time: one panel per face (time on x, one line per class,
    in the overlay's colours), the faces seen longest first when there are more than `max_faces`.

    Object-oriented matplotlib on the Agg canvas: no display and no pyplot global state.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    faces = summary.faces()
    shown = sorted(sorted(faces, key=lambda f: -f.frames)[:max_faces], key=lambda f: f.face_id)
    fig = Figure(figsize=(8, 1.2 + 1.7 * max(len(shown), 1)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(shown), 1), 1, sharex=True, squeeze=False)[:, 0]
    if not shown:
        axes[0].text(0.5, 0.5, "no faces found", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, face in zip(axes, shown):
        times, probs = summary.series(face.face_id)
        for k, name in enumerate(summary.class_names):
            ax.plot(times, probs[:, k], color=_rgb(name), linewidth=1.4, label=_plain(name),
                    marker="o" if len(times) == 1 else None)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.grid(alpha=0.3)
        ax.set_title(f"face #{face.face_id}: {face.first_s:.2f}-{face.last_s:.2f} s, {face.frames} frames, "
                     f"mostly {_plain(face.dominant)} ({face.shares[face.dominant]:.0%} of them)", loc="left", fontsize=9)
    if shown:
        axes[-1].set_xlabel("time (s)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 7), fontsize=8, frameon=False)
    if title or len(shown) < len(faces):
        note = f" ({len(shown)} of {len(faces)} faces: those seen longest)" if len(shown) < len(faces) else ""
        fig.suptitle(_plain(f"{title or ''}{note}"), fontsize=10)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    except OSError as e:
        raise FERError(f"cannot write plot {path} ({e.strerror})") from None
