"""Training recipes on top of the plain loop: weight EMA, mixup, distillation from trained teachers, and a
second head that learns the FER+ crowd's votes."""

import copy

import numpy as np
import torch

from fer_common.datasets import ferplus
from fer_common.model.checkpoint import load_checkpoint, model_from_checkpoint
from fer_common.errors import FERError
from fer_common.preprocess import mean_std


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


class ModelEma:
    """An exponential moving average of a model's weights (and BatchNorm statistics), as timm's ModelEmaV3.

    The averaged copy is what validation sees and what the best checkpoint holds: it generalises better than
    the raw weights at the end of a noisy epoch. The decay warms up ((1 + n) / (10 + n)) so early averages are
    not dominated by the random initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, live in zip(self.module.state_dict().values(), unwrap(model).state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.lerp_(live.detach(), 1.0 - decay)
            else:
                ema.copy_(live)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.module.load_state_dict(state["weights"])


def mix_batch(x, y: torch.Tensor, alpha: float):
    """Mixup (Zhang et al. 2018): blend each image with a partner; returns (x, y, partner labels, lambda).
    `x` may be a tuple of views of the same images (the student's and the teachers'): each is mixed alike."""
    lam = float(np.random.beta(alpha, alpha))
    views = x if isinstance(x, tuple) else (x,)
    perm = torch.randperm(views[0].shape[0]).to(views[0].device)
    mixed = tuple(v * lam + v[perm] * (1 - lam) for v in views)
    return (mixed if isinstance(x, tuple) else mixed[0]), y, y[perm], lam


class Teachers:
    """Trained models whose averaged, temperature-softened probabilities a student learns from (distillation).

    Each teacher gets the student's augmented batch in its own preprocessing (size, channels, normalisation),
    so teachers of another width or input size work too. A teacher may know more classes than the data (the
    FER+ model's Contempt teaching a 7-class student): its logits are matched to the data's classes by name,
    case aside, and the rest dropped, so its probabilities are renormalised over the student's classes. They
    run under torch.inference_mode. With `mirror`
    each teacher also sees the mirror image and its probabilities are averaged (test-time augmentation for
    the teachers only: twice their cost, none at the student's run time).
    """

    def __init__(self, paths, class_names, student_prep: dict, device, temperature: float = 4.0, mirror: bool = False):
        self.models, self.preps, self.columns, self.temperature, self.mirror = [], [], [], temperature, mirror
        for path in paths:
            ckpt = load_checkpoint(path)
            self.columns.append(teacher_columns(ckpt["class_names"], class_names, path))
            if ckpt["preprocessing"]["channels"] != student_prep["channels"]:
                raise FERError(f"teacher {path} takes {ckpt['preprocessing']['channels']}-channel images, "
                               f"the student {student_prep['channels']}-channel ones")
            self.models.append(model_from_checkpoint(ckpt, path).to(device).eval())
            self.preps.append((tuple(ckpt["preprocessing"]["input_size"]), *mean_std(ckpt["preprocessing"], device)))
        self.student_mean, self.student_std = mean_std(student_prep, device)

    def soft_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the teachers' softmax(logits / T) for the student's normalised batch x."""
        return self._soft_targets(x).clone()   # a clone outside inference mode is a tensor autograd may use

    @torch.inference_mode()
    def _soft_targets(self, x: torch.Tensor) -> torch.Tensor:
        unit = x.float() * self.student_std + self.student_mean     # back to [0, 1] pixels
        total = 0
        for model, (size, mean, std), columns in zip(self.models, self.preps, self.columns):
            t = unit
            if tuple(t.shape[-2:]) != size:
                t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
            t = (t - mean) / std
            views = (t, t.flip(-1)) if self.mirror else (t,)
            for view in views:
                logits, _ = model(view.contiguous(memory_format=torch.channels_last))
                if columns is not None:
                    logits = logits[:, columns]
                total = total + torch.softmax(logits.float() / self.temperature, dim=1) / len(views)
        return total / len(self.models)


def teacher_columns(teacher_classes, class_names, path) -> list[int] | None:
    """The teacher's logit column of each of the data's classes (None when they are the same list), by name."""
    if list(teacher_classes) == list(class_names):
        return None
    known = {name.lower(): i for i, name in enumerate(teacher_classes)}
    missing = [name for name in class_names if name.lower() not in known]
    if missing:
        raise FERError(f"teacher {path} has classes {list(teacher_classes)}, which lack {missing} of the data's "
                       f"{list(class_names)}")
    return [known[name.lower()] for name in class_names]


def distillation_loss(logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teachers || student) at temperature T, scaled by T^2 so its gradients match the hard loss's (Hinton et al.)."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=1)
    return torch.nn.functional.kl_div(log_p, soft_targets, reduction="batchmean") * temperature ** 2


class VoteHead(torch.nn.Module):
    """A training-only second head (multi-task): a linear layer on the model's embedding that learns the FER+
    crowd's vote distribution, while the model's own classifier keeps the folders' labels. The shared features
    get the crowd's reading as extra signal; the saved model is the model alone (the head's weights ride only
    in *.last.pth, for --resume)."""

    def __init__(self, embedding_dim: int, weight: float = 0.5):
        super().__init__()
        self.linear = torch.nn.Linear(embedding_dim, ferplus.N_EMOTIONS)
        self.weight = weight

    def loss(self, embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """weight x the soft cross-entropy against the rows of `targets` (N x 8 vote distributions) that have
        votes; rows of zeros (no votes) add nothing."""
        has = targets.sum(1) > 0
        log_p = torch.log_softmax(self.linear(embedding[has].float()), dim=1)
        return self.weight * -(targets[has] * log_p).sum(1).sum() / max(int(has.sum()), 1)
