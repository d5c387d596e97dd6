"""Weight averaging of trained models of one architecture (a "model soup", Wortsman et al. 2022).

Fine-tunes that start from the same model stay in one basin of the loss, so the weighted mean of their
weights is a model too, often better than each: here, generation 2 averaged with a fine-tune under broad
augmentation keeps generation 2's accuracy on clean faces and most of the fine-tune's robustness to blur
and compression (models/README.md). Averaging unrelated models (different seeds from scratch) does not work.
"""

import math
from pathlib import Path

import torch

from fer_common.model.checkpoint import load_checkpoint
from fer_common.errors import FERError

def strict_history(history: list, path) -> list:
    """The history as plain JSON values (numbers, strings, lists): a tensor or any other object in a row is
    refused here, before anything is written, not when the metrics file is."""
    def plain(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        raise FERError(f"{path}: its training history holds a {type(value).__name__}, not a plain number or text")
    return [plain(r) for r in history]


# Must agree for weights to be averaged; the class order too, since it is the order of the logits.
_SAME = ("model_type", "model_config", "class_names", "preprocessing")


def _ingredient(ckpt: dict, path, weight: float) -> dict:
    """What the averaged checkpoint records of one ingredient: enough to retrace how it was trained."""
    return {"file": Path(path).name, "weight": weight, "epoch": ckpt.get("epoch"),
            "metrics": ckpt.get("metrics", {}), "args": ckpt.get("args", {}),
            "averaged_from": ckpt.get("averaged_from")}


def average_checkpoints(paths, weights=None) -> tuple[dict, dict]:
    """(checkpoint, history): the checkpoint whose floating-point weights are the `weights`-weighted mean of
    those of `paths`, and its X_metrics.json (each ingredient's weight and training history, as training
    writes one history per run). Each file is read once.

    Integer buffers (BatchNorm's batch counters) come from the first file. The result has no calibration
    (fit it again: `fer calibrate`) and no training state; `averaged_from` lists the ingredients."""
    paths = list(paths)
    if len(paths) < 2:
        raise FERError("averaging needs at least two checkpoints")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise FERError(f"{len(weights)} weight(s) for {len(paths)} checkpoints: give one weight per checkpoint")
    if any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise FERError(f"weights must be positive finite numbers, got {', '.join(map(str, weights))}")
    top = max(weights)                    # normalised by the largest first: 1e308 + 1e308 does not overflow
    weights = [w / top for w in weights]
    total = sum(weights)
    first = load_checkpoint(paths[0])
    average = {k: torch.zeros_like(v, dtype=torch.float64) if v.is_floating_point() else v.clone()
               for k, v in first["state_dict"].items()}
    ingredients, histories = [], []
    for i, (path, weight) in enumerate(zip(paths, weights)):
        ckpt = first if i == 0 else load_checkpoint(path)
        for key in _SAME:
            if ckpt.get(key) != first.get(key):
                raise FERError(f"{path} differs from {paths[0]} in its {key.replace('_', ' ')} "
                               f"({ckpt.get(key)} vs {first.get(key)}): only models of one architecture, "
                               f"classes and preprocessing can be averaged")
        state = ckpt["state_dict"]
        reference = first["state_dict"]
        if state.keys() != average.keys() or any(state[k].shape != average[k].shape or state[k].dtype != reference[k].dtype
                                                 for k in average):
            raise FERError(f"{path}: its weights do not match those of {paths[0]} tensor for tensor "
                           f"(names, shapes and number types must all agree)")
        for key, value in state.items():
            if value.is_floating_point():
                average[key] += value.double() * (weight / total)
        ingredients.append(_ingredient(ckpt, path, weight / total))
        history = ckpt.get("history", [])
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise FERError(f"{path}: its training history is malformed (a list of per-epoch records expected)")
        history = strict_history(history, path)
        best = next((r for r in history if r.get("epoch") == ckpt.get("epoch")), None)
        histories.append({"file": Path(path).name, "weight": weight / total, "best": best, "history": history})
    state_dict = {k: v.to(first["state_dict"][k].dtype) if v.is_floating_point() else v for k, v in average.items()}
    checkpoint = {**{k: first[k] for k in ("format", "version", *_SAME)}, "state_dict": state_dict,
                  "metrics": {}, "averaged_from": ingredients}
    return checkpoint, {"model_type": first["model_type"], "class_names": first["class_names"],
                        "averaged_from": histories}
