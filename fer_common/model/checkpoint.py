"""The checkpoint: one self-describing dict of plain types, loadable with weights_only=True.

    {
      "format": "fer-checkpoint", "version": 1,
      "model_type": "default" | "advanced",
      "model_config": constructor kwargs (e.g. backbone, embedding_dim),
      "class_names": names in the order of the model's outputs (the order it was trained with),
      "preprocessing": {"input_size", "channels", "mean", "std"},
      "state_dict": weights,
      "epoch", "metrics", "args",
      "optimizer", "scheduler", "early_stopping", "history"   (training state, for --resume)
    }
"""

import warnings
from pathlib import Path

import torch

from fer_common.errors import FERError
from fer_common.model_info import MODEL_TYPES, check_class_names, check_preprocessing, temperature_of
from fer_common.files import save_torch
from fer_common.labels import EMOTIONS
from fer_common.model.networks import create_model, default_preprocessing

FORMAT = "fer-checkpoint"
VERSION = 1


def make_checkpoint(model, model_type: str, model_config: dict, class_names, preprocessing: dict, **extra) -> dict:
    """Assemble the checkpoint dict; `extra` holds epoch, metrics, args and training state."""
    model = getattr(model, "module", model)   # unwrap DistributedDataParallel
    # pretrained* only mattered when the model was first built: the weights are in the state dict now.
    config = {k: v for k, v in model_config.items() if not k.startswith("pretrained")}
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "model_type": model_type, "model_config": config,
            "class_names": list(class_names), "preprocessing": dict(preprocessing),
            "state_dict": state_dict, **extra}


def save_checkpoint(checkpoint: dict, path) -> None:
    save_torch(checkpoint, path)


def load_checkpoint(path, expected_type: str | None = None) -> dict:
    """Load a checkpoint file safely (weights_only=True) and check it; plain state dicts are wrapped.

    A bare state dict (as older scripts saved) is accepted when `expected_type` says which model it is.
    """
    path = Path(path)
    if not path.is_file():
        raise FERError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():         # PyTorch's own warnings about old pickles: our line says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing to the user
        if "unsupported global" in str(e).lower():        # a class to import: code would run
            raise FERError(f"{path} holds Python objects besides weights (a pickle that could run code when "
                           f"loaded), so it is refused: use a checkpoint this toolkit wrote, or save the model's "
                           f"state dict alone") from None
        why = "an empty file" if path.stat().st_size == 0 else \
            f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        raise FERError(f"{path} is not a readable PyTorch checkpoint ({why})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = obj
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if expected_type is None:
            raise FERError(f"{path} holds bare weights with no model type: pass --model_type")
        state_dict = {k.removeprefix("module."): v for k, v in obj.items()}
        model_type = expected_type
        ckpt = {"format": FORMAT, "version": VERSION, "model_type": model_type, "model_config": {},
                "class_names": list(EMOTIONS), "preprocessing": default_preprocessing(model_type),
                "state_dict": state_dict}
    else:
        raise FERError(f"{path} is not a FER checkpoint (no model type, class names or weights in it)")
    check_checkpoint(ckpt, path)
    if expected_type is not None and ckpt["model_type"] != expected_type:
        raise FERError(f"{path} holds a '{ckpt['model_type']}' model, not '{expected_type}' "
                       f"(use --model_type {ckpt['model_type']})")
    return ckpt


def check_checkpoint(ckpt: dict, path) -> None:
    """Every key a checkpoint must have, of the right kind, so that a damaged file fails here, in one line,
    naming the file and what is wrong, rather than somewhere inside the model or the training loop."""
    missing = [k for k in ("model_type", "class_names", "preprocessing", "state_dict") if k not in ckpt]
    if missing:
        raise FERError(f"{path} is a damaged FER checkpoint: no {', '.join(missing)} in it")
    if ckpt["model_type"] not in MODEL_TYPES:
        raise FERError(f"{path}: unknown model type {str(ckpt['model_type'])[:50]!r} "
                       f"(expected {', '.join(MODEL_TYPES)})")
    check_class_names(ckpt["class_names"], path)
    check_preprocessing(ckpt["preprocessing"], path)
    temperature_of(ckpt.get("calibration"), path)
    state = ckpt["state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items())):
        raise FERError(f"{path}: state_dict holds no weights (not a dict of tensors)")
    if not isinstance(ckpt.get("model_config", {}), dict):
        raise FERError(f"{path}: model_config is not a dict")
    for key in ("optimizer", "scheduler", "early_stopping", "args", "metrics"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise FERError(f"{path}: {key} is damaged (not a dict)")
    if "epoch" in ckpt and (not isinstance(ckpt["epoch"], int) or isinstance(ckpt["epoch"], bool) or ckpt["epoch"] < 0):
        raise FERError(f"{path}: epoch {ckpt['epoch']!r} is not a number of epochs")
    if "history" in ckpt and not isinstance(ckpt["history"], list):
        raise FERError(f"{path}: history is damaged (not a list)")


def model_from_checkpoint(ckpt: dict, path="checkpoint") -> torch.nn.Module:
    """Rebuild the model from a checkpoint dict, with its weights, in eval mode."""
    config = dict(ckpt.get("model_config", {}))
    config.setdefault("num_classes", len(ckpt["class_names"]))
    if config["num_classes"] != len(ckpt["class_names"]):
        raise FERError(f"{path}: model_config says {config['num_classes']} classes, but it names "
                       f"{len(ckpt['class_names'])} ({', '.join(map(str, ckpt['class_names']))})")
    outputs = _classifier_outputs(ckpt["state_dict"])
    if outputs is not None and outputs != len(ckpt["class_names"]):
        raise FERError(f"{path}: the weights have {outputs} outputs, but the file names "
                       f"{len(ckpt['class_names'])} classes ({', '.join(map(str, ckpt['class_names']))})")
    try:
        model = create_model(ckpt["model_type"], **config)
    except (TypeError, ValueError) as e:   # a constructor argument this version does not know, or a bad value
        raise FERError(f"{path}: its model_config {config} does not build a '{ckpt['model_type']}' model "
                       f"({str(e).splitlines()[0][:200]})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise FERError(f"{path}: weights do not fit the '{ckpt['model_type']}' model ({first[:200]})") from None
    return model.eval()


def _classifier_outputs(state_dict) -> int | None:
    """Rows of the last classifier layer's weight (the number of classes the weights predict), if found."""
    weights = [k for k in state_dict if k.startswith("classifier.") and k.endswith(".weight")]
    if not weights:
        return None
    tensor = state_dict[sorted(weights)[-1]]
    return int(tensor.shape[0]) if tensor.ndim == 2 else None


# ----------------------------------------------------------------------------- checkpoint surgery

def init_from_checkpoint(model, path, model_type: str, model_config: dict, class_names, log=print) -> dict:
    """Start `model` from a trained checkpoint: every feature and embedding weight, which must all fit (same model
    type and size); the classifier head only when the classes are the same, else only the rows of the classes both
    know (by name). Returns the checkpoint's preprocessing, which its weights expect."""
    ckpt = load_checkpoint(path, expected_type=model_type)
    source, own = ckpt["state_dict"], model.state_dict()
    head = [k for k in own if k.startswith("classifier.")]
    misfit = [k for k in own if k not in head and (k not in source or source[k].shape != own[k].shape)]
    if misfit:
        k = misfit[0]
        why = "missing" if k not in source else f"{tuple(source[k].shape)} there, {tuple(own[k].shape)} here"
        theirs = ckpt.get("model_config", {})
        differ = [f"{key} {theirs[key]} (this run: {model_config[key]})" for key in sorted(theirs)
                  if key in model_config and _plain(theirs[key]) != _plain(model_config[key])]
        raise FERError(f"--init_from {path}: its weights do not fit this model ({len(misfit)} of {len(own)}, e.g. "
                       f"{k}: {why}); it was trained with "
                       f"{', '.join(differ) if differ else f'model_config {theirs}'}: use the same settings")
    state = {k: source[k] for k in own if k not in head}
    old_names, new_names = list(ckpt["class_names"]), list(class_names)
    fits = all(k in source and source[k].shape[1:] == own[k].shape[1:] for k in head)
    shared = [n for n in new_names if n in old_names] if fits else []
    if old_names == new_names and fits:
        state.update({k: source[k] for k in head})
        kept_head = "classifier head kept (same classes)"
    else:
        last = sorted(k for k in head if k.endswith(".weight"))[-1].removesuffix("weight")
        for k in head:
            if k.startswith(last) and shared:   # rows of the output layer are classes: copy those both files know
                rows = own[k].clone()
                for n in shared:
                    rows[new_names.index(n)] = source[k][old_names.index(n)]
                state[k] = rows
            else:
                state[k] = own[k]
        if len(shared) == len(new_names) == len(old_names):
            kept_head = "classifier head kept, its rows put in the data's class order"
        else:
            kept_head = (f"classifier head re-initialised for {len(new_names)} classes (was {len(old_names)})"
                         + (f", keeping the rows of {', '.join(shared)}" if shared else ""))
    model.load_state_dict(state)
    log(f"init_from {path}: kept {len(own) - len(head)} feature and embedding tensors; {kept_head}")
    return dict(ckpt["preprocessing"])


def _plain(value):
    """Config values compared as JSON would store them (a tuple and a list of the same widths are equal)."""
    return list(value) if isinstance(value, (list, tuple)) else value
