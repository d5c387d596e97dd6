"""Result files: streamed .jsonl (one Result.to_dict per line) and .csv (results.table_rows), and .parquet
(the .csv's table, written whole at the end), each with its provenance.

    with ResultWriter("out.jsonl", class_names, provenance(predictor, tta=True, detector="yunet")) as w:
        for result in results:
            w.write(result)

Every output of `inference.py --output` goes through here, and `real_time_video.py --log_csv` writes its rows
with the same CsvTable (into a file that appears whole at the end of the run, fer_common.video.sinks.CsvLog).
A results file is written as results come (flushed every second), so a run cut short keeps what it did and
`--resume` goes on from it. Rules that protect what is already on disk:
  * a symbolic link, a file with other hard links, or anything but a regular file is never written: refused;
  * an existing file is replaced only with overwrite=True, continued only with resume=True;
  * one run at a time writes a file (an advisory lock; a second run is refused);
  * `<output>.meta.json` records the toolkit version, the model (file name and SHA-256), classes, TTA and
    detector; resume refuses a file written with anything different, naming the difference;
  * resume cuts only what does not parse (a half-written line, or the rows of an image cut between faces);
  * a file deleted while the run writes it, or a failed write (a full disk), is an error, not a silent loss.
"""

import contextlib
import csv
import json
import os
import stat
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from fer_common.version import __version__
from fer_common.errors import FERError
from fer_common.infer.tta import tta_setting
from fer_common.files import atomic_path, check_regular_file, write_json
from fer_common.results import Result, table_columns, table_rows
from fer_common.files import sha256_file

FORMATS = (".jsonl", ".csv")
# Fields of the provenance record that must match for --resume (the version too: framing or preprocessing
# may change between versions).
PROVENANCE_KEYS = ("version", "model", "model_sha256", "classes", "tta", "detector", "embedding")


def provenance(predictor, tta, detector: str | None, embedding: bool = False) -> dict:
    """Who wrote an output: toolkit version, model file name(s) and SHA-256, classes, TTA (true, false or a
    number of views: tta.tta_setting), detector."""
    members = getattr(predictor, "members", [predictor])
    return {"toolkit": "fer-toolkit", "version": __version__,
            "model": " + ".join(Path(m.path).name for m in members),
            "model_sha256": " + ".join(sha256_file(m.path) for m in members),
            "classes": list(predictor.class_names), "tta": tta_setting(tta), "detector": detector,
            "embedding": bool(embedding)}


def meta_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def _refuse_links(path: Path) -> None:
    if path.is_symlink():
        raise FERError(f"output {path} is a symbolic link: results are never written through or over a link "
                       "(give the file itself, or another --output)")


def _check_stream(path, resume: bool = False, overwrite: bool = False) -> bool:
    """Fail early, in one line, if a results file cannot be written or would replace one without --overwrite.
    Returns True if there are results to resume from."""
    path = Path(path)
    if resume and overwrite:
        raise FERError("--resume keeps what --output holds, --overwrite replaces it: give one of them")
    if path.suffix.lower() not in FORMATS:
        raise FERError(f"--output {path}: give a .jsonl or .csv file (not '{path.suffix or 'no extension'}')")
    _refuse_links(path)
    if len(os.fsencode(meta_path(path).name)) > 255:
        raise FERError(f"--output {path.name[:40]}...: the name is too long for its provenance file "
                       f"({meta_path(path).name[-20:]}, over 255 bytes); give a shorter name")
    if os.path.lexists(path) and not path.is_file():
        raise FERError(f"output {path} exists and is not a regular file")
    if not path.parent.is_dir():
        raise FERError(f"cannot write output {path}: folder {path.parent} does not exist")
    exists = path.is_file() and path.stat().st_size > 0
    if exists and not (resume or overwrite):
        raise FERError(f"output {path} already exists: pass --resume to continue it, or --overwrite to replace it")
    return exists and resume


def _open_locked(path: Path) -> int:
    """A descriptor for the regular file at `path` (created if missing), never through a link, locked."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if path.is_symlink():
            _refuse_links(path)
        raise FERError(f"cannot write output {path} ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FERError(f"output {path} is not a regular file")
        if st.st_nlink > 1:
            raise FERError(f"output {path} has other hard links: results are never written into a file shared "
                           "with another name (give another --output)")
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:         # Windows: no advisory locks; one run per output is the user's care
            pass
        except OSError:
            raise FERError(f"output {path} is being written by another run: wait for it, or give another "
                           "--output") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_writer(path, class_names, meta: dict, embedding: bool = False, resume: bool = False,
                overwrite: bool = False):
    """The writer for an output's format: ParquetWriter for .parquet, else ResultWriter (.jsonl, .csv)."""
    kind = ParquetWriter if is_parquet(path) else ResultWriter
    return kind(path, class_names, meta, embedding, resume, overwrite)


def check_results_file(path, resume: bool = False, overwrite: bool = False) -> bool:
    """May a results file (--output .jsonl, .csv or .parquet) be written, continued or replaced? One line if
    not; True when there are results to resume from."""
    return (_check_parquet if is_parquet(path) else _check_stream)(path, resume, overwrite)


class CsvTable:
    """The CSV writer of every .csv the toolkit writes: the header (results.table_columns) once, at the start
    of an empty file, then one row per face per Result (results.table_rows)."""

    def __init__(self, file, class_names, header: bool = True):
        self.class_names = list(class_names)
        self._rows = csv.writer(file)
        if header:
            self._rows.writerow(table_columns(self.class_names))

    def write(self, result: Result) -> None:
        self._rows.writerows(table_rows(result, self.class_names))


class ResultWriter:
    """Streams Results to a .jsonl or .csv file; see the module's docstring for the rules it keeps."""

    def __init__(self, path, class_names, meta: dict, embedding: bool = False, resume: bool = False,
                 overwrite: bool = False, flush_seconds: float = 1.0):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if embedding and self.format == ".csv":
            raise FERError("--embedding: embeddings go to .jsonl output (or --json), not CSV")
        self.class_names, self.embedding, self.flush_seconds = list(class_names), embedding, flush_seconds
        self.meta = dict(meta, embedding=bool(embedding))
        self.done, self.done_with_faces, self.repaired_bytes = set(), 0, 0
        resuming = _check_stream(self.path, resume, overwrite)
        self._fd = _open_locked(self.path)
        try:
            if resuming:
                check_provenance(self.path, self.meta)
                self.repaired_bytes, self.done, self.done_with_faces = repair_and_read(self.path, self._fd,
                                                                                       self.class_names)
            else:
                os.ftruncate(self._fd, 0)
                write_json(meta_path(self.path), self.meta)
            os.lseek(self._fd, 0, os.SEEK_END)
            self._file = open(self._fd, "w", newline="" if self.format == ".csv" else None, encoding="utf-8",
                              errors="surrogateescape", buffering=1 << 20, closefd=False)
        except BaseException:
            os.close(self._fd)
            raise
        self._csv = (CsvTable(self._file, self.class_names, header=os.fstat(self._fd).st_size == 0)
                     if self.format == ".csv" else None)
        self._last_flush = time.monotonic()

    def write(self, result) -> None:
        try:
            if self._csv is not None:
                self._csv.write(result)
            else:
                self._file.write(result.to_json(self.embedding) + "\n")
            if time.monotonic() - self._last_flush >= self.flush_seconds:
                self._file.flush()
                self._last_flush = time.monotonic()
        except OSError as e:
            raise FERError(f"cannot write output {self.path} ({e.strerror})") from None

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self._file.close()
            if os.fstat(fd).st_nlink == 0:
                raise FERError(f"output {self.path} was deleted (or its folder was) during the run: its results "
                               "are lost")
        except OSError as e:
            raise FERError(f"cannot write output {self.path} ({e.strerror})") from None
        finally:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_provenance(path: Path, meta: dict) -> None:
    """--resume only continues a file written by the same model and settings (its .meta.json says which)."""
    mp = meta_path(path)
    try:
        if os.path.lexists(mp):
            check_regular_file(mp, "provenance file")           # a FIFO planted there would block forever
        old = json.loads(mp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FERError(f"cannot resume {path}: {mp.name} (which model wrote it) is missing, so its results "
                       "could mix with another model's (pass --overwrite to start again)") from None
    except (OSError, ValueError, RecursionError):
        raise FERError(f"cannot resume {path}: {mp.name} is damaged (pass --overwrite to start again)") from None
    if not isinstance(old, dict):
        raise FERError(f"cannot resume {path}: {mp.name} is damaged (pass --overwrite to start again)")
    for key in PROVENANCE_KEYS:
        if old.get(key) != meta.get(key):
            raise FERError(f"cannot resume {path}: it was written with {key} {_short(old.get(key))}, this run "
                           f"has {_short(meta.get(key))} (pass --overwrite to start again, or another --output)")


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def repair_and_read(path: Path, fd: int, class_names) -> tuple[int, set, int]:
    """Cut what a killed run left half-written, and list what is done: (bytes cut, sources done, with faces).

    Only what does not parse is cut: a last line without its newline that is not a complete record, or in a
    CSV the rows of an image that stops between its faces (its `faces` column says how many it has)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()                          # b"" when the file ends with a newline
    read = _read_jsonl if path.suffix.lower() == ".jsonl" else _read_csv
    keep, done, with_faces = read(path, lines, tail, class_names)
    cut = len(data) - keep
    if cut:
        os.ftruncate(fd, keep)
    if keep and not data[:keep].endswith(b"\n"):
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, b"\n")                     # a complete last record that only lacked its newline
    return cut, done, with_faces


def _damaged(path, n, why) -> FERError:
    return FERError(f"cannot resume from {path}: line {n} {why} (pass --overwrite to start again)")


def _read_jsonl(path, lines, tail, class_names):
    done, with_faces, keep = set(), 0, 0
    last = len(lines) + (1 if tail else 0)
    for n, raw in enumerate(lines + ([tail] if tail else []), 1):
        record = None
        try:
            record = json.loads(raw.decode("utf-8", "surrogateescape")) if raw.strip() else None
        except (ValueError, RecursionError):
            pass
        ok = (isinstance(record, dict) and isinstance(record.get("source"), str)
              and isinstance(record.get("faces"), list) and (record.get("error") is None or isinstance(record.get("error"), str)))
        if not raw.strip():
            keep += len(raw) + 1
            continue
        if not ok:
            if n == last:               # only the last line can be half-written by a killed run
                break
            raise _damaged(path, n, "is not a result line")
        names = {k for f in record["faces"] if isinstance(f, dict) for k in (f.get("probabilities") or {})}
        if record["faces"] and names != set(class_names):
            raise _damaged(path, n, "holds another model's classes")
        done.add(record["source"])
        with_faces += len(record["faces"]) > 0
        keep += len(raw) + (1 if n <= len(lines) else 0)
    return keep, done, with_faces


def _read_csv(path, lines, tail, class_names):
    columns = table_columns(class_names)
    done, with_faces, keep = set(), 0, 0
    pending = None                                      # (source, rows seen, rows expected, bytes)
    for n, raw in enumerate(lines, 1):
        try:
            row = next(csv.reader([raw.decode("utf-8", "surrogateescape")]), [])
        except csv.Error:
            raise _damaged(path, n, "is not a CSV row") from None
        if n == 1:
            if row != columns:
                raise FERError(f"cannot resume from {path}: its columns are not this model's (pass --overwrite "
                               "to start again, or another --output)")
            keep += len(raw) + 1
            continue
        if len(row) != len(columns):
            raise _damaged(path, n, f"has {len(row)} columns, not {len(columns)}")
        source, count = row[0], row[6]
        try:
            expected = max(1, int(count))
        except ValueError:
            raise _damaged(path, n, f"has faces {count[:20]!r}, not a number") from None
        if pending is None or pending[0] != source or pending[1] == pending[2]:
            if pending is not None and pending[1] < pending[2]:
                raise _damaged(path, n, f"starts {source!r} while {pending[0]!r} misses faces")
            pending = [source, 0, expected, 0]
        pending[1] += 1
        pending[3] += len(raw) + 1
        if pending[1] == pending[2]:                    # the image is complete
            keep += pending[3]
            done.add(source)
            with_faces += expected > 0 and row[5] != ""
    return keep, done, with_faces


def import_pyarrow():
    """pyarrow (with its Parquet module), or one line saying how to install it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FERError("Parquet needs pyarrow: pip install 'fer-toolkit[table]'") from None
    return pa, pq


def is_parquet(path) -> bool:
    return path is not None and str(path).lower().endswith(".parquet")


def _check_parquet(path, resume: bool = False, overwrite: bool = False) -> bool:
    """_check_stream's rules for a .parquet file, which cannot be resumed (its footer comes last)."""
    path = Path(path)
    if resume:
        raise FERError(f"--resume: a .parquet output ({path}) is written whole at the end and cannot be "
                       "continued; use a .jsonl or .csv --output to resume, or --overwrite")
    _refuse_links(path)
    if os.path.lexists(path) and not path.is_file():
        raise FERError(f"output {path} exists and is not a regular file")
    if not path.parent.is_dir():
        raise FERError(f"cannot write output {path}: folder {path.parent} does not exist")
    if path.is_file() and not overwrite:
        raise FERError(f"output {path} already exists: pass --overwrite to replace it")
    import_pyarrow()
    return False


class ParquetWriter:
    """Results to one Parquet file, in input order: the columns of results.table_columns (one row per face,
    as the .csv), plus `embedding` (a list of floats) with embedding=True. Merged, not one file per Ray block:
    the driver writes it, so it is one file whatever the engine, in the order of the images, readable with
    pandas.read_parquet. Row groups of `row_group` faces; the file appears (atomically, with its
    `.meta.json` provenance) only when the run ends: a run cut short leaves nothing half-written.
    ResultWriter's interface, for inference.py."""

    def __init__(self, path, class_names, meta: dict, embedding: bool = False, resume: bool = False,
                 overwrite: bool = False, row_group: int = 65_536):
        pa, pq = import_pyarrow()
        _check_parquet(path, resume, overwrite)
        self.path, self.class_names, self.embedding = Path(path), list(class_names), embedding
        self.overwrite = overwrite
        # One run at a time, as for .jsonl and .csv (whose lock is on the file itself): here on a hidden
        # sidecar, since the file appears only at the end.
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock_fd = _open_locked(self._lock_path)
        self.meta = dict(meta, embedding=bool(embedding))
        self.done, self.done_with_faces, self.repaired_bytes = set(), 0, 0
        self.columns = table_columns(self.class_names)
        kinds = {"source": pa.string(), "top_emotion": pa.string(), "error": pa.string(), "time": pa.float64(),
                 "score": pa.float64(), "confidence": pa.float64(), **{c: pa.float64() for c in self.class_names}}
        fields = [pa.field(c, kinds.get(c, pa.int64())) for c in self.columns]
        if embedding:
            fields.append(pa.field("embedding", pa.list_(pa.float32())))
        self.schema, self._pa, self._rows, self._row_group = pa.schema(fields), pa, [], row_group
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path, ".parquet"))
        self._writer = pq.ParquetWriter(str(tmp), self.schema)

    def write(self, result: Result) -> None:
        rows = table_rows(result, self.class_names)
        if self.embedding:
            embeddings = [None if f.embedding is None else np.asarray(f.embedding, np.float32).tolist()
                          for f in result.faces] or [None]
            rows = [row + [e] for row, e in zip(rows, embeddings)]
        self._rows += rows
        if len(self._rows) >= self._row_group:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            names = self.schema.names
            data = {n: [row[k] for row in self._rows] for k, n in enumerate(names)}
            self._writer.write_table(self._pa.table(data, schema=self.schema))
            self._rows = []

    def close(self, exc=(None, None, None)) -> None:
        if self._writer is None:
            return
        try:
            if exc[0] is None:
                self._flush()
            self._writer.close()
            if exc[0] is None and not self.overwrite and os.path.lexists(self.path):
                raise FERError(f"output {self.path} appeared while this run wrote it (another program?): it is "
                               f"left as it is and this run's results are dropped; give another --output")
            if exc[0] is None:
                write_json(meta_path(self.path), self.meta)
        except BaseException as e:
            exc = (type(e), e, e.__traceback__)
            raise
        finally:
            self._writer = None
            try:
                self._stack.__exit__(*exc)          # renames onto path, or (after an error) removes the temp file
            finally:
                os.close(self._lock_fd)
                with contextlib.suppress(OSError):
                    os.unlink(self._lock_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(exc)
