"""One predictor, two runtimes: face crops in, emotion probabilities and 128-d embeddings out.

    predictor = Predictor("fer_model.pth")            # or "fer_model.onnx", or a shipped one: "default", "ferplus"
    probabilities, embeddings = predictor(crops)      # N x num_classes, N x 128, one batched forward

The model file carries everything needed to use it (model type, class names in output order,
preprocessing), so a .pth checkpoint and its ONNX export give the same answers.

ONNX files run with NumPy, OpenCV and ONNX Runtime only; PyTorch is imported when a .pth file is loaded.
"""

import argparse
import copy
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fer_common import cli
from fer_common.cli import add_device_args
from fer_common.device import set_cpu_threads
from fer_common.errors import FERError
from fer_common.metrics import softmax
from fer_common.model_info import MODEL_TYPES, check_graph, read_onnx_metadata, temperature_of
from fer_common.infer.tta import VIEW_SETS, VIEWS, tta_setting, view_names
from fer_common.preprocess import prepare_batch, small_input
from fer_common.runtime import PROVIDERS, make_session
from fer_common.shipped import DETECTOR_FILE, MODEL_FILE, MODEL_STEM, SHIPPED_MODELS_DIR, SHORT_NAMES

# What the training scripts write in the current folder, per model type (".pth" or ".onnx" appended).
MODEL_STEMS = {"default": MODEL_STEM, "advanced": f"{MODEL_STEM}_advanced"}


class Prediction(NamedTuple):
    probabilities: np.ndarray   # N x num_classes float32, rows sum to 1, columns in predictor.class_names order
    embeddings: np.ndarray      # N x embedding_dim float32


class Predictor:
    """Emotion probabilities and embeddings for a list of face crops, from a .pth checkpoint or an ONNX file.

    path: model file ('.onnx' runs through ONNX Runtime, anything else is loaded as a PyTorch checkpoint), or a
        shipped model's short name: "default" (the int8 model FER() loads) or "ferplus".
    model_type: if given, the file must hold this model type (a clear error otherwise).
    device: PyTorch device ('auto' | 'cpu' | 'cuda' ...); with ONNX, 'cpu' keeps ONNX Runtime on the CPU.
    provider: ONNX Runtime provider, 'auto' | 'cpu' | 'cuda' | 'tensorrt' (auto: CUDA when torch sees a GPU).
    tta: also classify each crop's mirror image and average the two probabilities (one batch of 2N); or a
        number of views to average (fer_common.infer.tta.VIEW_SETS: 4 and 10 add zooms and shifts).
    """

    def __init__(self, path, model_type: str | None = None, device: str = "auto", provider: str = "auto",
                 tta: bool = False):
        self.path = named_model_file(path)[0]          # a file, or a shipped model's short name: "default", "ferplus"
        self.tta, self.views = tta_setting(tta), view_names(tta)
        self.runtime = "onnx" if self.path.suffix.lower() == ".onnx" else "torch"
        if not self.path.is_file():
            raise FERError(f"model file not found: {self.path}" if not self.path.exists()
                           else f"model file {self.path} is not a regular file")
        info = self._load_onnx(provider, device) if self.runtime == "onnx" else self._load_torch(device)
        if model_type is not None and info["model_type"] != model_type:
            raise FERError(f"{self.path} holds a '{info['model_type']}' model, not '{model_type}' "
                           f"(use --model_type {info['model_type']})")
        self.model_type = info["model_type"]
        self.class_names = list(info["class_names"])
        self.preprocessing = dict(info["preprocessing"])
        self.temperature = temperature_of(info.get("calibration"), self.path)

    def _load_onnx(self, provider: str, device: str) -> dict:
        info = read_onnx_metadata(self.path)
        self.session, self.provider = make_session(self.path, provider, device, info["preprocessing"])
        self.device = "cuda" if self.provider != "CPUExecutionProvider" else "cpu"
        check_graph(self.path, info, {i.name: i.shape for i in self.session.get_inputs()},
                    {o.name: o.shape for o in self.session.get_outputs()})
        batch = self.session.get_inputs()[0].shape[0]
        # Many exporters fix the batch at 1: such a graph runs one crop at a time (TTA and folders send more).
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        if self.fixed_batch not in (None, 1):
            raise FERError(f"{self.path} is exported with a fixed batch of {batch} faces; export it with a dynamic "
                           f"batch (this toolkit's export does) or a batch of 1")
        dim = self.session.get_outputs()[1].shape[-1]
        self.embedding_dim = dim if isinstance(dim, int) else 128
        return info

    def _load_torch(self, device: str) -> dict:
        try:
            import torch
        except ImportError:
            raise FERError(f"{self.path} is a PyTorch checkpoint, and PyTorch is not installed: install the "
                           f"training extra (pip install 'fer-toolkit[train]'), or use an .onnx model") from None
        from fer_common.model.checkpoint import load_checkpoint, model_from_checkpoint
        from fer_common.device import resolve_device

        ckpt = load_checkpoint(self.path)
        self.embedding_dim = int(ckpt.get("model_config", {}).get("embedding_dim", 128))
        self._device = resolve_device(device)
        self.device = str(self._device)
        self.provider = None
        model = model_from_checkpoint(ckpt, self.path).to(self._device)
        # cuDNN runs convolutions fastest on NHWC tensors.
        self._memory_format = torch.channels_last if self._device.type == "cuda" else torch.contiguous_format
        self.model = model.to(memory_format=self._memory_format).eval()
        return {k: ckpt.get(k) for k in ("model_type", "class_names", "preprocessing", "calibration")}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def prefers_one_thread(self) -> bool:
        """A model too small to split across cores (the 48x48 CNN): one thread runs it fastest."""
        return small_input(self.preprocessing)

    def with_temperature(self, temperature: float) -> "Predictor":
        """The same loaded model with another softmax temperature (1.0: the raw, uncalibrated probabilities)."""
        other = copy.copy(self)
        other.temperature = temperature
        return other

    def set_threads(self) -> None:
        """For scripts: PyTorch threads that suit this model. A small CNN gains nothing from intra-op threads
        at a few faces per batch, and on a busy CPU their spin-waits cost far more than they give. ONNX sessions
        get their threads when they are made (runtime.make_session)."""
        if self.runtime == "torch":
            set_cpu_threads(1 if self.prefers_one_thread else None)

    def describe(self) -> str:
        where = self.provider if self.runtime == "onnx" else self.device
        tta = "" if len(self.views) == 1 else ", TTA" if len(self.views) == 2 else f", TTA of {len(self.views)} views"
        return f"{self.path} ({self.model_type} model, {self.runtime} on {where}{tta})"

    def __call__(self, crops, bgr: bool = True) -> Prediction:
        return self.predict(crops, bgr)

    def predict(self, crops, bgr: bool = True, temperature: float | None = None) -> Prediction:
        """crops: uint8 face images (HxWx3 BGR as OpenCV gives them, or HxW gray), any sizes. One forward pass.

        Probabilities are softmax(logits / T) with the model's fitted temperature T (1 for an uncalibrated
        model); `temperature` overrides it (1.0 gives the raw, uncalibrated probabilities).
        """
        crops = list(crops)
        if not crops:
            return Prediction(np.zeros((0, self.num_classes), np.float32), np.zeros((0, self.embedding_dim), np.float32))
        batch = prepare_batch(crops, self.preprocessing, bgr=bgr)            # N, C, H, W
        n, k = len(crops), len(self.views)
        if k == 1:
            logits, embeddings = self._forward(batch)
        elif small_input(self.preprocessing):               # the views in one forward pass (k x N)
            logits, embeddings = self._forward(np.concatenate([VIEWS[v](batch) for v in self.views]))
        else:                                               # big inputs: a pass per view bounds the memory
            outputs = [self._forward(VIEWS[v](batch)) for v in self.views]
            logits, embeddings = (np.concatenate([o[i] for o in outputs]) for i in (0, 1))
        probabilities = softmax(logits, self.temperature if temperature is None else temperature)
        # The views show the same face: average what they say; the embedding stays the crop's own.
        probabilities = probabilities.reshape(k, n, -1).mean(0)
        return Prediction(probabilities.astype(np.float32), embeddings[:n].astype(np.float32))

    def _forward(self, batch: np.ndarray):
        if self.runtime == "onnx":
            if self.fixed_batch is None:
                logits, embeddings = self.session.run(["logits", "embedding"], {"input": batch})
                return logits, embeddings
            # a graph exported with a batch of 1: one crop at a time
            outputs = [self.session.run(["logits", "embedding"], {"input": batch[i:i + 1]}) for i in range(len(batch))]
            return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self._device, non_blocking=True).to(memory_format=self._memory_format)
            logits, embeddings = self.model(x)
            return logits.float().cpu().numpy(), embeddings.float().cpu().numpy()


class Ensemble:
    """Several predictors used as one: their probabilities are averaged (in the first model's class order).

    The models may differ in architecture, input size and runtime, but must share their class names (in any
    order). Embeddings come from the first model: embeddings of different models live in different spaces.
    """

    def __init__(self, members: list):
        if not members:
            raise FERError("an ensemble needs at least one model")
        first = members[0]
        self.members = members
        self.class_names = list(first.class_names)
        self.order = []
        for m in members:
            if sorted(m.class_names) != sorted(self.class_names):
                raise FERError(f"{m.path} predicts {m.class_names}, {first.path} predicts {self.class_names}: "
                               f"an ensemble needs models of the same classes")
            self.order.append([m.class_names.index(c) for c in self.class_names])
        # What callers read off a predictor: the first model's file, preprocessing and embedding.
        for name in ("path", "model_type", "preprocessing", "embedding_dim", "tta", "runtime", "device", "provider"):
            setattr(self, name, getattr(first, name))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_threads(self) -> None:
        if any(m.runtime == "torch" for m in self.members):
            set_cpu_threads(1 if all(m.prefers_one_thread for m in self.members) else None)

    @property
    def temperature(self) -> float:
        return self.members[0].temperature if len({m.temperature for m in self.members}) == 1 else float("nan")

    def with_temperature(self, temperature: float) -> "Ensemble":
        return Ensemble([m.with_temperature(temperature) for m in self.members])

    def describe(self) -> str:
        return f"ensemble of {len(self.members)}: " + " + ".join(m.describe() for m in self.members)

    def __call__(self, crops, bgr: bool = True) -> Prediction:
        return self.predict(crops, bgr)

    def predict(self, crops, bgr: bool = True, temperature: float | None = None) -> Prediction:
        crops = list(crops)
        results = [m.predict(crops, bgr, temperature) for m in self.members]
        probabilities = np.mean([r.probabilities[:, order] for r, order in zip(results, self.order)], axis=0)
        return Prediction(probabilities.astype(np.float32), results[0].embeddings)


def load_models(paths, model_type: str | None = None, device: str = "auto", provider: str = "auto",
                tta: bool = False):
    """One model file as a Predictor; several as an Ensemble averaging their probabilities."""
    members = [Predictor(p, model_type, device=device, provider=provider, tta=tta) for p in paths]
    if not members:
        raise FERError("no model file given")
    return members[0] if len(members) == 1 else Ensemble(members)


def shipped_model(name: str) -> Path | None:
    """The shipped model file a short name stands for ("default", "shipped"), or None for any other name."""
    return SHIPPED_MODELS_DIR / SHORT_NAMES[name] if name in SHORT_NAMES else None


def named_model_file(name) -> tuple[Path, str]:
    """A model the caller names (--checkpoint, FER(model=...), Predictor(...)): a file, or a shipped model's short
    name ("default", "ferplus") when no file of that name is here; and the reason, as resolve_model_file gives it."""
    shipped = shipped_model(str(name))
    if shipped is not None and not Path(name).exists():
        return shipped, f"the shipped model '{name}'"
    return Path(name), "named"


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def resolve_model_file(model_type: str = "default", checkpoint=None, use_onnx: bool = False,
                       here=".") -> tuple[Path, str]:
    """Which model file runs, and why: the one rule of the `fer` command, the scripts and the API.

    1. a named model (--checkpoint, FER(model=...)): a file, or a short name of a shipped model ("default");
    2. else a model trained here: what the training scripts write in the folder `here` (fer_model.pth or
       fer_model_advanced.pth, .onnx with use_onnx), as the original README's workflow runs them (train, then
       `python inference.py`). Commands look in the current folder; the API passes here=None (a library call
       has no folder of its own). A .pth needs PyTorch: on the light install it is passed over, said so;
    3. else the shipped default model, the int8 ONNX file (4x faster per face on a CPU, as accurate).
    """
    if model_type not in MODEL_STEMS:
        raise FERError(f"unknown model type '{model_type}' (expected one of {', '.join(MODEL_STEMS)})")
    if checkpoint:
        path, why = named_model_file(checkpoint)
        if not path.is_file():
            raise FERError(f"model file not found: {path}")
        return path, why
    skipped = ""
    if here is not None:
        trained = Path(here) / f"{MODEL_STEMS[model_type]}{'.onnx' if use_onnx else '.pth'}"
        if trained.is_file() and (use_onnx or _torch_installed()):
            return trained, "trained here: found in the current folder; --checkpoint default for the shipped one"
        if trained.is_file():
            skipped = f"; {trained} here needs PyTorch (pip install 'fer-toolkit[train]'), so it is not used"
    if model_type == "default" and (SHIPPED_MODELS_DIR / MODEL_FILE).is_file():
        return SHIPPED_MODELS_DIR / MODEL_FILE, "shipped" + skipped
    how = ("train one with fine_tuning.py" if model_type == "default"
           else "train one with advanced_fine_tuning.py, or make one with advanced_pretrained.py")
    looked = f"{MODEL_STEMS[model_type]}{'.onnx' if use_onnx else '.pth'} here" if here is not None else "a model"
    raise FERError(f"no {model_type} model found (looked for {looked}" +
                   (f" and {SHIPPED_MODELS_DIR / MODEL_FILE}" if model_type == "default" else "") +
                   f"): pass --checkpoint PATH, or {how}")


def _views_arg(text: str):
    """--tta_views N: a TTA setting (tta_setting) of 2, 4 or 10 views."""
    choices = [n for n in VIEW_SETS if n > 1]
    if not str(text).strip().isdigit() or int(text) not in choices:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, choices))}, got '{text}'")
    return tta_setting(int(text))


def add_predictor_args(parser, tta: bool = False):
    """Model and runtime flags shared by inference.py, evaluate.py and real_time_video.py.

    tta: whether mirror test-time augmentation is on by default. It gains about a point of accuracy for twice
    the classifier time per face: worth it for images and evaluation, not within a live frame's budget.
    """
    g = parser.add_argument_group("Model")
    g.add_argument("--model_type", default="default", choices=sorted(MODEL_TYPES),
                   help="which model: the 48x48 grayscale CNN or the timm (Swin) advanced model")
    g.add_argument("--checkpoint", metavar="PATH", nargs="+", type=cli.path_arg,
                   help="model file (.pth or .onnx), or a shipped model's short name (default); several make an "
                        "ensemble that averages their probabilities; without it: fer_model.pth / "
                        "fer_model_advanced.pth trained in this folder (.onnx with --use_onnx), else the shipped "
                        "default model (int8 ONNX)")
    g.add_argument("--use_onnx", action="store_true", help="run the ONNX export through ONNX Runtime")
    g.add_argument("--provider", default="auto", choices=PROVIDERS,
                   help="ONNX Runtime provider (auto: CUDA when a GPU is usable, else the CPU)")
    g.add_argument("--tta", dest="tta", action="store_true", default=tta,
                   help="test-time augmentation: average each face's probabilities with its mirror image's")
    g.add_argument("--no_tta", dest="tta", action="store_false", help="classify each face once (no mirror image)")
    g.add_argument("--tta_views", dest="tta", type=_views_arg, metavar="N",
                   help="test-time augmentation over N views: 2 = --tta; 4 adds a 0.95 zoom and its mirror; 10 adds "
                        "zooms of 0.9 and 0.95, their mirrors and 2 px shifts (about 0.7 points of accuracy, 5x "
                        "the classifier's time per face)")
    add_device_args(parser)
    return g


def model_inputs(args) -> dict:
    """Every model file a command will read, {description: path}, for files.check_outputs (no output may
    replace one): its checkpoints, found by resolve_model_file's rule, and the face detector's model."""
    checkpoints = args.checkpoint if isinstance(args.checkpoint, (list, tuple)) else [args.checkpoint]
    found = {}
    for checkpoint in checkpoints:
        try:
            path, _ = resolve_model_file(args.model_type, checkpoint, args.use_onnx)
        except FERError:
            continue                                    # said in one line when the model is loaded
        found[f"the model {path}"] = path
    if getattr(args, "detector", None) == "yunet":
        found["--detector_model"] = getattr(args, "detector_model", None) or SHIPPED_MODELS_DIR / DETECTOR_FILE
    return found


def predictor_from_args(args, log=print):
    """Resolve the model file(s) from the flags (resolve_model_file's rule), load them once, and say which
    files were loaded and why."""
    checkpoints = args.checkpoint if isinstance(args.checkpoint, (list, tuple)) else [args.checkpoint]
    chosen = [resolve_model_file(args.model_type, c, args.use_onnx) for c in checkpoints]
    predictor = load_models([path for path, _ in chosen], args.model_type, args.device, args.provider, args.tta)
    why = "; ".join(sorted({why for _, why in chosen} - {"named"}))
    log(f"model: {predictor.describe()}" + (f" ({why})" if why else ""))
    return predictor
