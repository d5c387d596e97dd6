"""What every script shares on the command line: help format, flag groups, one-line errors."""

import argparse
import contextlib
import math
import os
import re
import sys

from fer_common.errors import FERError
from fer_common.files import VIDEO_EXTENSIONS, os_error_text, writable_image_extension


# ----------------------------------------------------------------------------- argument types
# One place for what a flag's value may be. Each raises argparse.ArgumentTypeError, which argparse prints
# as one line naming the flag: "error: argument --epochs: must be an integer >= 1, got '0'".

def int_range(lo: int | None = None, hi: int | None = None, name: str | None = None):
    """An argparse type: an integer within [lo, hi] (either bound may be None)."""
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got '{text}'") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                want = f"an integer >= {lo}"
            elif lo is None:
                want = f"an integer <= {hi}"
            else:
                want = f"an integer from {lo} to {hi}"
            raise argparse.ArgumentTypeError(f"must be {want}, got '{text}'")
        return value
    parse.__name__ = name or "int"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
                name: str | None = None):
    """An argparse type: a finite number within lo..hi (each end open or closed; None: unbounded)."""
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got '{text}'") from None
        bad = not math.isfinite(value)
        bad |= lo is not None and (value <= lo if lo_open else value < lo)
        bad |= hi is not None and (value >= hi if hi_open else value > hi)
        if bad:
            left = "" if lo is None else ("> " if lo_open else ">= ") + f"{lo:g}"
            right = "" if hi is None else ("< " if hi_open else "<= ") + f"{hi:g}"
            want = " and ".join(x for x in (left, right) if x) or "finite"
            raise argparse.ArgumentTypeError(f"must be a finite number {want}, got '{text}'")
        return value
    parse.__name__ = name or "float"
    return parse


positive_int = int_range(1, name="positive_int")
non_negative_int = int_range(0, name="non_negative_int")
# numpy's and torch's seeds must fit 32 bits; training adds the process rank to it.
seed_int = int_range(0, 2**31 - 1, name="seed")
# OpenCV treats big indices as backend ids (index + 100 * API) and negative ones as "any camera".
camera_index = int_range(0, 99, name="camera_index")
num_workers_int = int_range(0, 256, name="num_workers")
# --detect_width: 0 (full size) or a width a face detector can still work at.
_detect_width = int_range(32, 16384, name="detect_width")


def detect_width(text: str) -> int:
    if str(text).strip() == "0":
        return 0
    try:
        return _detect_width(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 0 (full size) or an integer from 32 to 16384, got '{text}'") from None


positive_float = float_range(0, lo_open=True, name="positive_float")
non_negative_float = float_range(0, name="non_negative_float")
probability = float_range(0, 1, name="probability")                                # 0 <= p <= 1
fraction = float_range(0, 1, lo_open=True, hi_open=True, name="fraction")         # 0 < p < 1
unit_interval_open_top = float_range(0, 1, hi_open=True, name="unit_interval")     # 0 <= p < 1


def device_arg(text: str) -> str:
    """--device: auto | cpu | cuda | cuda:N | mps, and an N this machine has (checked when torch is loaded)."""
    value = str(text).strip().lower()
    match = re.fullmatch(r"auto|cpu|mps|cuda(?::(\d{1,4}))?", value)
    if not match:
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got '{text}'")
    if match.group(1) is not None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(match.group(1)) >= count:
            raise argparse.ArgumentTypeError(f"'{text}': this machine has {count} CUDA device(s)"
                                             + (f" (cuda:0 to cuda:{count - 1})" if count else ""))
    return value


def path_arg(text: str) -> str:
    """A path flag: not empty, no NUL byte (the OS would refuse it with a traceback)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    if "\0" in str(text):
        raise argparse.ArgumentTypeError(f"is not a valid path: {text!r}")
    return str(text)


def existing_file(text: str) -> str:
    path = path_arg(text)
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"file not found: '{text}'")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"'{text}' is not a file")
    return path


def existing_dir(text: str) -> str:
    path = path_arg(text)
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"folder not found: '{text}'" if not os.path.exists(path)
                                         else f"'{text}' is not a folder")
    return path


def output_file(*suffixes: str):
    """An argparse type for a file to write: a path, not an existing folder, with one of `suffixes` if given."""
    allowed = tuple(s.lower() for s in suffixes)

    def parse(text: str) -> str:
        path = path_arg(text)
        if os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"'{text}' is a folder; give a file name")
        if allowed and not path.lower().endswith(allowed):
            raise argparse.ArgumentTypeError(f"'{text}' must end in {' or '.join(allowed)}")
        return path
    parse.__name__ = "output_file"
    return parse


def image_output(text: str) -> str:
    """An annotated-image output: a file with an extension OpenCV can write in colour, or a folder."""
    path = path_arg(text)
    suffix = os.path.splitext(path)[1].lower()
    if suffix and not os.path.isdir(path) and not writable_image_extension(suffix):
        raise argparse.ArgumentTypeError(f"'{text}': OpenCV cannot write '{suffix}' colour images here "
                                         f"(use .png, .jpg, .webp, .tif, .bmp, ...; or a folder without an extension)")
    return path


def video_output(text: str) -> str:
    path = output_file(*sorted(VIDEO_EXTENSIONS))(text)
    return path


def url_or_path(text: str) -> str:
    """download_dataset --source: 'kaggle', a well-formed http(s) URL, or a path."""
    from urllib.parse import urlparse

    value = path_arg(text)
    if "://" not in value:
        return value
    try:
        url = urlparse(value)
        url.port   # raises ValueError for a port that is not a number 0-65535
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"malformed URL '{text}' ({e})") from None
    if url.scheme.lower() not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"unsupported URL '{text}': give an http(s) URL, a local path or 'kaggle'")
    if not url.hostname or any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(f"malformed URL '{text}' (no host name, or spaces in it)")
    return value


def http_url(text: str) -> str:
    value = url_or_path(text)
    if "://" not in value:
        raise argparse.ArgumentTypeError(f"must be an http(s) URL, got '{text}'")
    return value


def sha256_arg(text: str) -> str:
    value = str(text).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise argparse.ArgumentTypeError(f"must be 64 hexadecimal digits, got '{text}'")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default once, and keeps the docstring's line breaks (it holds the README command).

    A default is left out where the help already says it ("(default: the webcam)") and for a required flag; a
    switch says whether it is on by default, and an off-switch (--no_tta) names the flag it turns off."""

    def _get_help_string(self, action):
        text = action.help or ""
        turns_off = getattr(action, "turns_off", None)
        if turns_off:
            return f"{text} (turns off {turns_off})"
        if (action.required or action.default is argparse.SUPPRESS or "(default" in text or "%(default)" in text
                or not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if action.nargs == 0 and isinstance(action.const, bool):        # a switch: on or off unless given
            on = getattr(action, "effective_default", action.default) == action.const
            return f"{text} (default: {'on' if on else 'off'})"
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends like every other bad input: one `error: ...` line and exit code 1
    (scripts give 2 a meaning of their own: inference.py's "no face found")."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        # Switches that share a destination (--tta / --no_tta): the value the parse starts from is the first
        # one's default (or set_defaults'), and the one that sets False is the other's off-switch.
        switches = {}
        for action in self._actions:
            if action.option_strings and action.nargs == 0 and isinstance(action.const, bool):
                switches.setdefault(action.dest, []).append(action)
        for dest, actions in switches.items():
            on = next((a for a in actions if a.const), None)
            for action in actions:
                action.effective_default = self.get_default(dest)
                if on is not None and not action.const:
                    action.turns_off = on.option_strings[0]
        return super().format_help()


def make_parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the script's docstring."""
    return ArgumentParser(description=doc, formatter_class=HelpFormatter, **kwargs)


def add_device_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Device")
    group.add_argument("--device", default="auto", type=device_arg,
                       help="auto | cpu | cuda | cuda:N | mps (auto picks CUDA, then MPS, then the CPU)")
    return group


def quiet_native_logs() -> None:
    """Keep OpenCV's and FFmpeg's own warnings off stderr, so that our one `error:` line is the message.

    The script owns the process, so this is run_main's job, never a library constructor's. A user's own
    OPENCV_LOG_LEVEL / OPENCV_FFMPEG_LOGLEVEL settings win.
    """
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")      # AV_LOG_QUIET, read when a capture opens
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and os.environ["OPENCV_LOG_LEVEL"].upper() == "SILENT":
        # The variable is read when OpenCV loads, which the scripts' imports have done already.
        with contextlib.suppress(AttributeError):
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


# What the light install (pip install .) leaves out, by the extra that brings it: [train] PyTorch and export,
# [serve] the web server stack of `fer serve` (Starlette on Uvicorn, prometheus_client, python-multipart).
EXTRA_MODULES = {
    "train": ("torch", "torchvision", "timm", "onnx", "onnxscript"),
    "serve": ("starlette", "uvicorn", "prometheus_client", "python_multipart", "multipart", "anyio", "h11"),
}
TRAIN_EXTRA_MODULES = EXTRA_MODULES["train"]


def missing_extra_message(e: ModuleNotFoundError, prog: str) -> str | None:
    """One line for a module of an extra ([train], [serve]) that is not installed; None for any other module."""
    name = (e.name or "").split(".")[0]
    extra = next((extra for extra, modules in EXTRA_MODULES.items() if name in modules), None)
    if extra is None:
        return None
    what = "PyTorch" if name.startswith("torch") else name
    return f"{prog} needs {what}, which the light install leaves out: pip install 'fer-toolkit[{extra}]'"


@contextlib.contextmanager
def one_line_errors(prog: str = "fer", names: dict | None = None):
    """Turn FERError, a missing module of an extra, Ctrl-C, a closed pipe or an OS error into one line and an exit
    code. Anything else still ends in one line (asking for a report), never a traceback. `names`: the scripts a
    message may name and what the user runs instead (say_as)."""
    try:
        yield
    except FERError as e:
        print(f"error: {say_as(str(e), names)}", file=sys.stderr)
        sys.exit(1)
    except ModuleNotFoundError as e:
        print(f"error: {missing_extra_message(e, prog) or f'a module is missing: {e.name} (please report)'}",
              file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        print("error: out of memory (an input much larger than expected? try a smaller --batch_size)",
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as command-line tools do.
        sys.stderr.close()
        sys.exit(141)
    except OSError as e:    # the disk or the OS refused (full, read-only, no permission): name the file and why
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # last resort: still one line, but each known case has its own message
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"error: unexpected {type(e).__name__}: {first} (please report)", file=sys.stderr)
        sys.exit(1)


def say_as(text, names: dict | None):
    """`text` with each checkout script it names ("python fine_tuning.py", "advanced_pretrained.py") as the
    command that runs it (names: script -> "fer train", ...); unchanged without names."""
    if not text or not names:
        return text
    for script, command in names.items():
        text = re.sub(rf"(?:python )?\b{re.escape(script)}", command, text)
    return text


def run_main(main, parser: argparse.ArgumentParser, argv=None, names: dict | None = None) -> None:
    """Parse arguments, call main(args), and turn every failure into one line and an exit code (one_line_errors)."""
    quiet_native_logs()
    # A file name that is not UTF-8 (a lone surrogate in Python) is printed with its bytes escapes, not a crash.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog, names):
        code = main(args)
    sys.exit(code or 0)
