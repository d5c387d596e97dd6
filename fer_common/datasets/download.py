"""Getting FER-2013 into `dataset/<split>/<Class>/`: from Kaggle, from a URL, or from a local file or folder.

`import_dataset` does the whole job. It never leaves a half data set that looks complete: the images are
written into a hidden temporary folder next to the output, together with a `.complete.json` marker (the
source and the counts), and that folder is renamed into place only at the end. A data set with the marker is
"complete" and is not fetched again unless forced. Downloads go to `<output>.download/` as `<name>.part`,
so an interrupted download resumes where it stopped; the folder is removed once the import succeeded.
"""

import contextlib
import json
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import requests
from tqdm import tqdm

from fer_common.errors import FERError
from fer_common.datasets.fer2013 import ImportResult, import_csv, import_folder, import_tar, import_zip
from fer_common.datasets.ferplus import VOTES_FILE_NAME, VoteTable, read_votes, write_votes
from fer_common.files import (check_outside, check_regular_file, is_image_name, make_temp_dir, os_error_text, replace_dir,
                              sha256_file, sibling_name, write_json)

KAGGLE_API = "https://www.kaggle.com/api/v1"
KAGGLE_DATASET = "msambare/fer2013"
COMPLETE_MARKER = ".complete.json"
TIMEOUT_S = 30
CHUNK = 1 << 16
MAX_DOWNLOAD_BYTES = 4 << 30    # FER-2013 is ~100 MB; a download past this is the wrong file, or hostile


# ---------------------------------------------------------------- downloading

def kaggle_credentials() -> tuple[str, str]:
    """(username, key) from KAGGLE_USERNAME/KAGGLE_KEY, else from kaggle.json, as the kaggle CLI finds them."""
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        return user, key
    config_dir = Path(os.environ["KAGGLE_CONFIG_DIR"]) if os.environ.get("KAGGLE_CONFIG_DIR") \
        else Path.home() / ".kaggle"
    path = config_dir / "kaggle.json"
    if path.is_file():
        try:
            token = json.loads(path.read_text())
            return str(token["username"]), str(token["key"])
        except (ValueError, KeyError, TypeError):
            raise FERError(f'{path} is not a Kaggle API token (expected {{"username": ..., "key": ...}})') from None
    raise FERError(f"no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or save your API token "
                   f"(kaggle.com > Settings > API > Create New Token) as {path}; "
                   f"or import a file you downloaded with --source PATH or --source URL")


def _no_network(url: str, e: Exception) -> FERError:
    host = urlparse(url).netloc or url
    why = "timed out" if isinstance(e, requests.Timeout) else "connection failed"
    return FERError(f"cannot reach {host} ({why}; no network?): download the data set elsewhere "
                    f"and import it with --source PATH")


def _http_error(response: requests.Response, url: str) -> FERError:
    hint = ""
    if response.status_code in (401, 403) and response.request.headers.get("Authorization"):
        hint = "; check your Kaggle username and API key, and that you accepted the data set's rules on kaggle.com"
    return FERError(f"HTTP {response.status_code} {response.reason} for {url}{hint}")


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_validator(part: Path) -> str | None:
    """The ETag (or Last-Modified) the server sent with the start of `part`, kept beside it."""
    try:
        value = json.loads(_validator_path(part).read_text()).get("validator")
        return value if isinstance(value, str) and value and "\n" not in value else None
    except (OSError, ValueError, AttributeError):
        return None


def _stream(url: str, part: Path, auth=None) -> None:
    """Append the rest of `url` to `part`, resuming with a Range request when part already holds a start.

    One function for one HTTP exchange (request, status, validators, body, progress): its steps share the
    response and the .part file, and splitting them would pass both around without making either clearer.

    A resume asks for the rest only if the file is still the one whose start we have (If-Range with the
    ETag or Last-Modified stored beside the .part); a server file that changed, or one we cannot tell
    apart, is downloaded again from the start rather than spliced onto the old start.
    """
    offset = part.stat().st_size if part.exists() else 0
    validator = _read_validator(part) if offset else None
    if offset and validator is None:
        print(f"cannot tell whether {url} changed since {part.name} was started; downloading it again")
        part.unlink()
        offset = 0
    # identity: the bytes on disk must be the bytes the server counts, or Range offsets would not match.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = validator
    try:
        response = requests.get(url, headers=headers, auth=auth, stream=True, timeout=TIMEOUT_S)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _no_network(url, e) from None
    except requests.RequestException as e:
        raise FERError(f"cannot download {url}: {type(e).__name__}") from None
    with response:
        if offset and response.status_code == 416:  # the part file is no prefix of this file: start over
            part.unlink()
            return _stream(url, part, auth)
        if response.status_code >= 400:
            raise _http_error(response, url)
        if offset and (response.status_code != 206
                       or not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")):
            print(f"the server sent the whole file (it changed, or the server does not resume downloads); "
                  f"starting {part.name} again from the start")
            offset = 0
        if not offset:
            # Strong ETags only: a weak one (W/...) may not be used with If-Range.
            etag = response.headers.get("ETag", "")
            validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
            if validator:
                write_json(_validator_path(part), {"url": url, "validator": validator})
            else:
                _validator_path(part).unlink(missing_ok=True)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name.removesuffix(".part")) as bar:
            try:
                for chunk in response.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
                    if f.tell() > MAX_DOWNLOAD_BYTES:
                        raise FERError(f"{url} is larger than {MAX_DOWNLOAD_BYTES >> 20} MB; FER-2013 is "
                                       f"about 100 MB: is this the right file?")
            except requests.RequestException as e:
                raise FERError(f"download of {url} broke off after {f.tell()} bytes ({type(e).__name__}); "
                               f"run the same command again to resume it") from None
            except OSError as e:    # a full or read-only disk: the part already written is kept to resume
                raise FERError(f"cannot write {part}: {os_error_text(e)}; make room and run the same command "
                               f"again to resume the download") from None
            size = f.tell()
    if total is not None and size != total:
        raise FERError(f"download of {url} broke off after {size} of {total} bytes; "
                       f"run the same command again to resume it")


def check_sha256(path: Path, expected: str, remove: bool) -> None:
    """Raise FERError naming both sums if `path` does not hash to `expected` (and delete it if `remove`)."""
    actual = sha256_file(path)
    if actual != expected.strip().lower():
        if remove:
            path.unlink()
        raise FERError(f"checksum mismatch for {path.name}: expected sha256 {expected.strip().lower()}, "
                       f"got {actual}" + (" (removed the download)" if remove else ""))


def check_url(url: str) -> None:
    """One line for a URL that requests would reject with an exception of its own."""
    import argparse

    from fer_common.cli import http_url
    try:
        http_url(url)
    except argparse.ArgumentTypeError as e:
        raise FERError(f"--source {e}") from None


def url_file_name(url: str) -> str:
    """A safe local name for what `url` downloads; at most 100 characters (`.part.json` must still fit NAME_MAX)."""
    name = Path(unquote(urlparse(url).path)).name
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "download"
    if len(name) > 100:
        stem, dot, suffix = name[-100:].partition(".")
        name = name[:60] + (f".{suffix}" if dot and len(suffix) <= 30 else "")
    return name


def fetch(url: str, cache_dir, sha256: str | None = None, auth=None, name: str | None = None) -> Path:
    """Download `url` into cache_dir/<name> (resuming cache_dir/<name>.part) and check its sha256."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / (name or url_file_name(url))
    if final.exists():
        print(f"using {final}, downloaded before")
    else:
        part = final.with_name(final.name + ".part")
        print(f"downloading {url}" + (f" (resuming {part})" if part.exists() else ""))
        try:
            _stream(url, part, auth)
        except BaseException:
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
            if not part.exists():
                _validator_path(part).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                cache_dir.rmdir()  # only if empty: nothing worth resuming
            raise
        os.replace(part, final)
        _validator_path(part).unlink(missing_ok=True)
    if sha256:
        check_sha256(final, sha256, remove=True)
    return final


def download_kaggle(cache_dir, api_base: str = KAGGLE_API, sha256: str | None = None) -> Path:
    """The msambare/fer2013 zip through Kaggle's REST API (HTTP basic auth with the API token)."""
    user, key = kaggle_credentials()
    url = f"{api_base.rstrip('/')}/datasets/download/{KAGGLE_DATASET}"
    return fetch(url, cache_dir, sha256, auth=(user, key), name="fer2013.zip")


# ---------------------------------------------------------------- importing

def detect_format(path: Path) -> str:
    """'zip', 'tar' or 'csv', from the name, else from the first bytes."""
    name = path.name.lower()
    if name.endswith(".zip"):
        if not zipfile.is_zipfile(path):
            raise FERError(f"{path} is a corrupt zip file (no zip directory: truncated download?)")
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    with open(path, "rb") as f:
        head = f.read(6)
    text = head.removeprefix(b"\xef\xbb\xbf").lower()
    if head[:2] in (b"\x1f\x8b", b"\xff\xfe", b"\xfe\xff") or text.startswith(b"em"):
        return "csv"  # import_csv reads the header and tells whether it is FER-2013's
    raise FERError(f"{path} is neither a zip, a tar nor a FER-2013 CSV")


def import_source(path: Path, dest: Path, keep_splits: bool = False) -> ImportResult:
    """Import a local folder or file of any supported format into the fresh folder dest."""
    if path.is_dir():
        kind = "folder"
    else:
        kind = detect_format(path)
    if keep_splits and kind != "csv":
        print("note: --keep_splits applies to fer2013.csv; the Kaggle layout only has train/ and test/")
    if kind == "csv":
        return import_csv(path, dest, keep_splits)
    return {"folder": import_folder, "zip": import_zip, "tar": import_tar}[kind](path, dest)


def read_marker(output) -> dict | None:
    """The `.complete.json` of a complete import at output, or None."""
    output = Path(output)
    try:
        marker = json.loads((output / COMPLETE_MARKER).read_text())
        if all((output / split).is_dir() for split in marker["counts"]):
            return marker
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


# What a data set made by this tool may hold besides its splits: validation_split.py's halves.
OWN_ENTRIES = {COMPLETE_MARKER, "train_new", "val_new", VOTES_FILE_NAME}


def foreign_entries(output: Path, marker: dict) -> list[str]:
    """Names in `output` that neither import_dataset nor validation_split.py made."""
    own = OWN_ENTRIES | set(marker.get("counts", {}))
    return sorted(p.name for p in output.iterdir() if p.name not in own)


def download_cache(output: Path) -> Path:
    """`<output>.download/`, where downloads wait until imported (shortened if the output's name is very long)."""
    return output.with_name(sibling_name(output.name, ".download"))


def check_output_folder(output: Path, source: str) -> None:
    """Refuse an --output whose replacement would delete what it must not: the current folder or one above
    it, the home folder, the source itself or a folder holding it."""
    if str(output).strip() in ("", ".", "..") or output.name in ("", ".", ".."):
        raise FERError(f"--output '{output}' names the current folder or one above it: give a new folder "
                       f"name for the data set (e.g. dataset)")
    # os.path.realpath, not Path.resolve: a symbolic link loop must not raise (RuntimeError before Python 3.13).
    resolved = Path(os.path.realpath(output))
    here = Path(os.path.realpath(Path.cwd()))
    if resolved == here or resolved in here.parents or resolved == Path(os.path.realpath(Path.home())) \
            or resolved.parent == resolved:
        raise FERError(f"--output {output} is {'the current folder' if resolved == here else 'a folder that holds the current folder, your home or /'}: "
                       f"give a new folder for the data set (e.g. dataset)")
    if source == "kaggle" or "://" in source:
        return
    src = Path(os.path.realpath(Path(source).expanduser()))
    if src == resolved or resolved in src.parents:
        raise FERError(f"--source {source} is inside --output {output}: importing would replace the folder "
                       f"that holds the source; choose another --output")
    if src.is_dir():    # the data set (and its download cache) written into the folder it is read from
        check_outside({"--output": output, "the download cache": download_cache(output)},
                      {"--source": src})


def check_replaceable(output: Path, marker: dict | None, force: bool) -> None:
    """An existing --output is replaced only when it is a complete import of this tool and --force says so;
    a folder that may hold the user's own files never is."""
    if output.exists() and not output.is_dir():
        raise FERError(f"--output {output} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()):
        holds_files = any(not q.is_dir() for q in output.rglob("*"))
        if not marker and not holds_files and not force:
            raise FERError(f"{output} exists but holds no complete import (no {COMPLETE_MARKER}), only empty "
                           f"folders; use --force to replace it")
        if not marker and holds_files:
            raise FERError(f"{output} exists but holds no complete import (no {COMPLETE_MARKER}): it may hold "
                           f"your own files, so it is never replaced, not even with --force; empty it yourself "
                           f"or choose another --output")
        foreign = foreign_entries(output, marker) if marker else []
        if foreign:
            raise FERError(f"{output} holds files this tool did not make ({', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}): --force only replaces a data set made by "
                           f"download_dataset.py; move them away or choose another --output")


def locate_source(source: str, cache_dir: Path, sha256: str | None, kaggle_api: str) -> tuple[Path, bool]:
    """(the file or folder to import, whether it was downloaded here): Kaggle and URLs are fetched into
    cache_dir (checked against sha256 when given); a local source must be a regular file or a folder."""
    downloaded = source == "kaggle" or source.lower().startswith(("http://", "https://"))
    if downloaded and source != "kaggle":
        check_url(source)
    if source == "kaggle":
        path = download_kaggle(cache_dir, kaggle_api, sha256)
    elif downloaded:
        path = fetch(source, cache_dir, sha256)
    elif "://" in source:
        raise FERError(f"unsupported URL {source}: give an http(s) URL, a local path, or 'kaggle'")
    else:
        path = Path(source).expanduser()
        if not os.path.lexists(path):
            raise FERError(f"source not found: {path} (give 'kaggle', an http(s) URL, or the path of a "
                           f"Kaggle-layout folder, its .zip/.tar(.gz), or fer2013.csv(.gz))")
        # A FIFO or a device (/dev/zero) would block, or never end, when read; a link loop names itself.
        check_regular_file(path, "--source", folder_ok=True)
        if sha256:
            if path.is_dir():
                raise FERError("--sha256 checks a file, but --source is a folder")
            check_sha256(path, sha256, remove=False)
    return path, downloaded


def attach_votes(table: VoteTable, dest: Path, result: ImportResult) -> dict:
    """Write dest/ferplus_votes.csv: the votes of `table` keyed by the paths of the images just imported into dest.

    FERPlus's fer2013new.csv follows fer2013.csv row by row, so it must have a row for every row the import read
    and a row for every image (its Usage agreeing); a file keyed by image path may lack a few images (those FER+
    dropped)."""
    images = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and is_image_name(p.name))
    rows = table.match(images)
    found = rows >= 0
    if table.by_row:
        read = result.total() + sum(result.skipped.values())
        if len(table.keys) != read or not found.all():
            raise FERError(f"--ferplus {table.path} does not follow the imported fer2013.csv row by row "
                           f"({len(table.keys)} rows there, {read} here; {int((~found).sum())} image(s) without "
                           f"a row of the same Usage): give the fer2013new.csv of this fer2013.csv")
    if not found.any():
        raise FERError(f"--ferplus {table.path}: none of the {len(images)} imported images has votes there "
                       f"(e.g. {images[0] if images else '-'} here, {table.keys[0]} there)")
    write_votes(dest / VOTES_FILE_NAME, [images[i] for i in np.flatnonzero(found)], table.votes[rows[found]])
    return {"file": table.path.name, "images": int(found.sum()), "without_votes": int((~found).sum())}


def import_dataset(source: str, output, keep_splits: bool = False, force: bool = False,
                   sha256: str | None = None, kaggle_api: str = KAGGLE_API, ferplus=None) -> dict:
    """Fetch FER-2013 from `source` ('kaggle', an http(s) URL or a local path) into output/<split>/<Class>/,
    with `ferplus` (a FER+ votes file) attached as output/ferplus_votes.csv keyed by the images written.

    Returns the marker dict (source, counts per split and class, skipped entries, FER+ votes) with
    `already_present` True when a complete import was found and `force` is off.
    """
    output = Path(output)
    check_output_folder(output, source)
    marker = read_marker(output)
    if marker and not force:
        if ferplus and "ferplus" not in marker:
            raise FERError(f"{output} holds an import without FER+ votes: pass --force to import it again with "
                           f"--ferplus, or give {ferplus} to fine_tuning.py --votes as it is")
        return {**marker, "already_present": True}
    table = read_votes(ferplus) if ferplus else None     # a bad votes file is refused before the import
    check_replaceable(output, marker, force)
    cache_dir = download_cache(output)
    path, downloaded = locate_source(source, cache_dir, sha256, kaggle_api)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(output)
    except OSError as e:
        raise FERError(f"cannot create {output}: {e.strerror} ({e.filename})") from None
    try:
        print(f"importing {path} into {output}")
        try:
            result = import_source(path, tmp, keep_splits)
            marker = {"source": source, "counts": result.plain_counts(), "skipped": dict(result.skipped),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if table is not None:
                marker["ferplus"] = attach_votes(table, tmp, result)
            write_json(tmp / COMPLETE_MARKER, marker)
            replace_dir(tmp, output)
        except OSError as e:   # the disk side: full, read-only, a path too long
            raise FERError(f"cannot write the data set into {output}: {os_error_text(e)}") from None
    except FERError as e:
        if downloaded and path.is_file() and "cannot write" not in str(e):
            # a download that cannot be imported would be reused forever
            path.unlink()
            with contextlib.suppress(OSError):
                cache_dir.rmdir()
            raise FERError(f"{e} (removed the downloaded file)") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if downloaded:
        # Only what fetch() put there: the folder may hold files of the user's.
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            cache_dir.rmdir()
    return {**marker, "already_present": False}
