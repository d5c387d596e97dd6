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

from pathlib import Path

import torch

from .cli import FERError
from .files import save_torch
from .labels import EMOTIONS
from .models import create_model, default_preprocessing

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
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing to the user
        raise FERError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
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
    if expected_type is not None and ckpt["model_type"] != expected_type:
        raise FERError(f"{path} holds a '{ckpt['model_type']}' model, not '{expected_type}' "
                       f"(use --model_type {ckpt['model_type']})")
    return ckpt


def model_from_checkpoint(ckpt: dict, path="checkpoint") -> torch.nn.Module:
    """Rebuild the model from a checkpoint dict, with its weights, in eval mode."""
    config = dict(ckpt.get("model_config", {}))
    config.setdefault("num_classes", len(ckpt["class_names"]))
    model = create_model(ckpt["model_type"], **config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise FERError(f"{path}: weights do not fit the '{ckpt['model_type']}' model ({first[:200]})") from None
    return model.eval()
