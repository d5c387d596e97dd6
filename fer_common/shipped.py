"""Where the files that ship with the toolkit (the trained model, the face detector, the browser page) are found.

In a clone of the repository they are in `models/` and `web/`; `pip install .` copies them into the package as
`fer_common/shipped/` and `fer_common/web/` (pyproject.toml maps one onto the other), so both layouts work
without a flag.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent / "models"
_INSTALLED = Path(__file__).resolve().parent / "shipped"
_CHECKOUT_WEB = Path(__file__).resolve().parent.parent / "web"
_INSTALLED_WEB = Path(__file__).resolve().parent / "web"


def shipped_dir() -> Path:
    """The copy inside an installed package if there is one, else models/ of the checkout this package is in.

    The package's own copy comes first: in site-packages, `../models` is whatever another package put there."""
    return _INSTALLED if _INSTALLED.is_dir() else _CHECKOUT


def web_dir() -> Path:
    """The browser page (`fer web`): the installed package's copy if there is one, else web/ of the checkout."""
    return _INSTALLED_WEB if _INSTALLED_WEB.is_dir() else _CHECKOUT_WEB


SHIPPED_MODELS_DIR = shipped_dir()
WEB_DIR = web_dir()
# ONNX Runtime Web (`npm ci` in web/), as the page loads it: web/fer.js imports ort.wasm.min.mjs (or
# ort.webgpu.min.mjs when the browser has WebGPU), and each loads its WebAssembly build. Only these ship in the
# wheel (pyproject.toml lists them; tests/commands/test_web.py checks the two lists and the files' own imports).
ORT_SUBDIR = "node_modules/onnxruntime-web/dist"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
             "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
# The shipped files, by name: the default model (what FER(), `fer analyse` and the page load unless told
# otherwise: the int8 one, 4x faster on a CPU and as accurate), its fp32 ONNX and PyTorch forms, and the detector.
MODEL_FILE = "fer_model.int8.onnx"
MODEL_STEM = "fer_model"
DETECTOR_FILE = "face_detection_yunet_2023mar.onnx"
# The FER+ model: the same network trained on the FER+ crowd votes, 8 classes (the seven and Contempt).
FERPLUS_MODEL_FILE = "ferplus_model.int8.onnx"
# Short names of the shipped models, for --checkpoint NAME, FER(model=NAME) and the browser page's ?model=NAME.
SHORT_NAMES = {"default": MODEL_FILE, "shipped": MODEL_FILE, "ferplus": FERPLUS_MODEL_FILE}
