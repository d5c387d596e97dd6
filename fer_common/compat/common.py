"""What the two front ends share: the peers' class names, the images they take, and the one-time note.

fer and deepface name FER-2013's seven emotions in lower case and in its label order ('angry', 'disgust',
'fear', 'happy', 'sad', 'surprise', 'neutral'); a model of this toolkit with other classes (FER+'s Contempt)
keeps those names too, lower-cased, after the seven.
"""

import base64
import binascii
import contextlib
import threading
import warnings
from pathlib import Path

import numpy as np

from fer_common.errors import FERError
from fer_common.labels import EMOTIONS, canonical_name
from fer_common.preprocess import decode_image

_noted: set[str] = set()
_noted_lock = threading.Lock()


def peer_names(class_names) -> dict[str, str]:
    """The toolkit's class name -> the peers' name, in the peers' order: FER-2013's emotions in label order,
    then any other class in the model's order ({'Happy': 'happy', ..., 'Contempt': 'contempt'})."""
    names = list(class_names)
    known = {canonical_name(n): n for n in names if canonical_name(n)}
    ordered = [known[e] for e in EMOTIONS if e in known] + [n for n in names if not canonical_name(n)]
    mapping = {n: (canonical_name(n) or n).lower() for n in ordered}
    if len(set(mapping.values())) < len(names):
        raise FERError(f"the model's classes {names} are not distinct in lower case, as fer and deepface name them")
    return mapping


def note_once(peer: str, message: str) -> None:
    """Say once per process and peer library that some of its settings do nothing here (a UserWarning, which
    the calling program may filter): code moved over keeps running, and its author learns why answers differ."""
    with _noted_lock:
        if peer in _noted:
            return
        _noted.add(peer)
    warnings.warn(message + " (said once)", UserWarning, stacklevel=3)


def changed(settings: dict, defaults: dict) -> list[str]:
    """'name=value' for each setting that differs from the peer's default (tuples and lists alike)."""
    def same(a, b):
        return list(a) == list(b) if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) else a == b

    return [f"{k}={v!r}" for k, v in settings.items() if not same(v, defaults[k])]


@contextlib.contextmanager
def errors_as(error):
    """A FERError raised in the block (a missing or unreadable image, a wrong array) is raised again as the
    peer's `error` type, with the same one line."""
    try:
        yield
    except error:
        raise
    except FERError as e:
        raise error(str(e)) from None


def peer_image(img, error=FERError):
    """An image as fer and deepface take it -> what fer_common.FER.analyse_image takes. A path stays a path (the
    toolkit decodes it by its own rule and names a missing or unreadable file); an array or a PIL image stays as
    it is; a base64 data URI ('data:image/jpeg;base64,...') and a binary file object are decoded to BGR.
    Anything else, and a URL (nothing is fetched: the toolkit runs offline), is `error`, in one line."""
    if isinstance(img, np.ndarray) or type(img).__module__.startswith("PIL."):
        return img
    if callable(getattr(img, "read", None)):          # deepface: a file object opened in binary mode
        data = img.read()
        if not isinstance(data, (bytes, bytearray)):
            raise error("a file object must be opened in binary mode ('rb')")
        return _decode(data, "the file object", error)
    if isinstance(img, Path):
        img = str(img)
    if not isinstance(img, str):
        raise error(f"cannot read a {type(img).__name__} as an image: give a path, a BGR numpy array or a "
                    f"base64 data URI")
    if img.startswith("data:image/"):
        payload = img.partition(",")[2]
        try:
            data = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            raise error("the base64 data URI is not valid base64") from None
        return _decode(data, "the base64 data URI", error)
    if img.lower().startswith(("http://", "https://")):
        raise error(f"URLs are not fetched here (the toolkit runs offline): download {img} and give its path")
    return img


def _decode(data: bytes, what: str, error) -> np.ndarray:
    image = decode_image(data, 3, bgr=True)       # the toolkit's one decode (a gigapixel header is refused)
    if image is None:
        raise error(f"cannot decode {what} as an image")
    return image
