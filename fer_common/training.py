"""The training loop both training scripts use: data, model, optimisation, early stopping, checkpoints, export.

Runs on one device, or under `torchrun --nproc_per_node=N` with DistributedDataParallel
(rank 0 logs, saves and exports; each rank trains on its own share of every epoch).
"""

import argparse
import copy
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import data as fdata
from .calibration import fit_calibration
from .checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from . import cli
from .cli import FERError, add_device_args
from .device import amp_dtype, autocast, clear_gpu_memory, cpu_count, grad_scaler, resolve_device, set_cpu_threads
from .files import check_output_files, same_file, write_json
from .models import create_model, default_preprocessing, count_parameters
from .onnx_export import export_onnx
from .preprocess import augment, cache_size, normalize


# ----------------------------------------------------------------------------- early stopping

class EarlyStopping:
    """Stop after `patience` epochs without a lower validation loss, then confirm with `extra_epochs` more.

    A new best validation loss during the confirmation epochs cancels the stop and training goes on
    as normal; otherwise training stops when they are used up.
    """

    def __init__(self, patience: int = 3, extra_epochs: int = 2, min_delta: float = 0.0):
        self.patience, self.extra_epochs, self.min_delta = patience, extra_epochs, min_delta
        self.best = math.inf
        self.bad_epochs = 0      # epochs since the last improvement
        self.pending = False     # patience is used up; confirmation epochs are running
        self.confirmed = 0       # confirmation epochs done

    def step(self, val_loss: float) -> str:
        """Record an epoch's validation loss.

        Returns 'improved', 'waiting', 'patience_out' (confirmation starts), 'confirming', 'resumed'
        (improved during confirmation) or 'stop'.
        """
        if val_loss < self.best - self.min_delta:
            resumed = self.pending
            self.best, self.bad_epochs, self.pending, self.confirmed = val_loss, 0, False, 0
            return "resumed" if resumed else "improved"
        self.bad_epochs += 1
        if self.pending:
            self.confirmed += 1
            return "stop" if self.confirmed >= self.extra_epochs else "confirming"
        if self.bad_epochs >= self.patience:
            self.pending = True
            return "stop" if self.extra_epochs == 0 else "patience_out"
        return "waiting"

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "pending": self.pending, "confirmed": self.confirmed}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.pending, self.confirmed = state["pending"], state["confirmed"]

    def describe(self, status: str) -> str:
        return {"improved": "improved (best so far, saved)",
                "resumed": "improved during confirmation: training goes on (saved)",
                "waiting": f"no improvement ({self.bad_epochs}/{self.patience})",
                "patience_out": f"no improvement ({self.bad_epochs}/{self.patience}): "
                                f"{self.extra_epochs} confirmation epoch(s) follow",
                "confirming": f"no improvement: confirmation epoch {self.confirmed}/{self.extra_epochs}",
                "stop": "no improvement: early stop confirmed"}[status]


# ----------------------------------------------------------------------------- weight averaging, mixup, teachers

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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float, generator=None):
    """Mixup (Zhang et al. 2018): blend each image with a partner; returns (x, y, partner labels, lambda)."""
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return x * lam + x[perm] * (1 - lam), y, y[perm], lam


class Teachers:
    """Trained models whose averaged, temperature-softened probabilities a student learns from (distillation).

    Each teacher gets the student's augmented batch in its own preprocessing (size, channels, normalisation),
    so teachers of another width or input size work too. They run under torch.inference_mode.
    """

    def __init__(self, paths, class_names, student_prep: dict, device, temperature: float = 4.0):
        self.models, self.preps, self.temperature = [], [], temperature
        for path in paths:
            ckpt = load_checkpoint(path)
            if list(ckpt["class_names"]) != list(class_names):
                raise FERError(f"teacher {path} has classes {ckpt['class_names']}, the data has {class_names}")
            if ckpt["preprocessing"]["channels"] != student_prep["channels"]:
                raise FERError(f"teacher {path} takes {ckpt['preprocessing']['channels']}-channel images, "
                               f"the student {student_prep['channels']}-channel ones")
            self.models.append(model_from_checkpoint(ckpt, path).to(device).eval())
            self.preps.append((tuple(ckpt["preprocessing"]["input_size"]), *_mean_std(ckpt["preprocessing"], device)))
        self.student_mean, self.student_std = _mean_std(student_prep, device)

    def soft_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the teachers' softmax(logits / T) for the student's normalised batch x."""
        return self._soft_targets(x).clone()   # a clone outside inference mode is a tensor autograd may use

    @torch.inference_mode()
    def _soft_targets(self, x: torch.Tensor) -> torch.Tensor:
        unit = x.float() * self.student_std + self.student_mean     # back to [0, 1] pixels
        total = 0
        for model, (size, mean, std) in zip(self.models, self.preps):
            t = unit
            if tuple(t.shape[-2:]) != size:
                t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
            logits, _ = model(((t - mean) / std).contiguous(memory_format=torch.channels_last))
            total = total + torch.softmax(logits.float() / self.temperature, dim=1)
        return total / len(self.models)


def _mean_std(prep: dict, device) -> tuple:
    """A preprocessing config's mean and std as 1 x C x 1 x 1 tensors on `device`."""
    return (torch.tensor(prep["mean"], device=device).view(1, -1, 1, 1),
            torch.tensor(prep["std"], device=device).view(1, -1, 1, 1))


def distillation_loss(logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teachers || student) at temperature T, scaled by T^2 so its gradients match the hard loss's (Hinton et al.)."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=1)
    return torch.nn.functional.kl_div(log_p, soft_targets, reduction="batchmean") * temperature ** 2


# ----------------------------------------------------------------------------- arguments

def add_training_args(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, learning_rate: float,
                      step_size: int, gamma: float, patience: int, output_model: str, output_onnx: str,
                      weight_decay: float = 1e-4, scheduler: str = "step") -> None:
    """The flags both training scripts share, with each script's own defaults."""
    g = parser.add_argument_group("Data")
    g.add_argument("--dataset_path", default="dataset", type=cli.path_arg, help="folder holding train_new/ and val_new/ (see validation_split.py)")
    g.add_argument("--num_workers", type=cli.num_workers_int, default=fdata.default_num_workers(), help="data loading processes")
    g.add_argument("--no_cache", action="store_true",
                   help="decode images from disk every epoch instead of caching them in memory as uint8")
    g = parser.add_argument_group("Optimisation")
    g.add_argument("--epochs", type=cli.positive_int, default=epochs, help="maximum number of epochs")
    g.add_argument("--batch_size", type=cli.positive_int, default=batch_size, help="images per batch (per process under torchrun)")
    g.add_argument("--learning_rate", type=cli.positive_float, default=learning_rate, help="initial learning rate (AdamW)")
    g.add_argument("--weight_decay", type=cli.non_negative_float, default=weight_decay, help="AdamW weight decay")
    g.add_argument("--scheduler", choices=["step", "cosine"], default=scheduler,
                   help="step: StepLR(step_size, gamma) as in the original; cosine: cosine decay over --epochs")
    g.add_argument("--step_size", type=cli.positive_int, default=step_size, help="StepLR: epochs between learning-rate drops")
    g.add_argument("--gamma", type=cli.float_range(0, 1, lo_open=True, name="gamma"), default=gamma, help="StepLR: learning-rate factor at each drop")
    g.add_argument("--patience", type=cli.positive_int, default=patience, help="early stopping: epochs without a lower val loss")
    g.add_argument("--extra_epochs", type=cli.non_negative_int, default=2,
                   help="early stopping: confirmation epochs after patience runs out (an improvement resumes training)")
    g.add_argument("--label_smoothing", type=cli.unit_interval_open_top, default=0.1, help="cross-entropy label smoothing")
    g.add_argument("--class_weights", choices=["none", "sqrt", "balanced"], default="sqrt",
                   help="loss weights against class imbalance (Disgust is 1.5%% of FER-2013): "
                        "balanced = 1/frequency, sqrt = its square root")
    g.add_argument("--seed", type=cli.seed_int, default=42, help="random seed")
    g = parser.add_argument_group("Weight averaging, mixup and distillation")
    g.add_argument("--ema_decay", type=cli.unit_interval_open_top, default=0.999,
                   help="exponential moving average of the weights, validated and saved as the best model (0 = off)")
    g.add_argument("--mixup", type=cli.non_negative_float, default=0.0, metavar="ALPHA",
                   help="mixup: blend image pairs with a Beta(ALPHA, ALPHA) weight (0 = off; 0.2 is typical)")
    g.add_argument("--teacher", action="append", default=[], type=cli.existing_file, metavar="CHECKPOINT",
                   help="distil from a trained model (repeat for an ensemble: their probabilities are averaged)")
    g.add_argument("--distill_temperature", type=cli.positive_float, default=4.0, help="softmax temperature of the teachers and student")
    g.add_argument("--distill_weight", type=cli.probability, default=0.7,
                   help="share of the loss from the teachers' soft labels (the rest from the true labels)")
    g = add_device_args(parser)
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="mixed precision: auto = bf16 (or fp16) on CUDA, off on the CPU; bf16 also speeds up "
                        "CPUs with AVX512-BF16/AMX")
    g = parser.add_argument_group("Output")
    g.add_argument("--output_model", default=output_model, type=cli.path_arg, help="best checkpoint (lowest val loss)")
    g.add_argument("--output_onnx", default=output_onnx, type=cli.output_file(".onnx"), help="ONNX export of the best model, written at the end")
    g.add_argument("--resume", metavar="CHECKPOINT", type=cli.existing_file, help="continue training from a checkpoint (its *.last.pth file)")
    g.add_argument("--init_from", metavar="CHECKPOINT", type=cli.existing_file,
                   help="start a new run from a trained model of the same type and size (e.g. models/fer_model.pth): "
                        "its feature and embedding weights are kept, the classifier head is replaced when the data's "
                        "classes differ; unlike --resume, epochs, optimizer and output files start afresh")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")


def last_checkpoint_path(output_model) -> Path:
    p = Path(output_model)
    return p.with_name(p.stem + ".last" + p.suffix)


def metrics_path(output_model) -> Path:
    p = Path(output_model)
    return p.with_name(p.stem + "_metrics.json")


# ----------------------------------------------------------------------------- distributed

def init_distributed(device_arg: str):
    """(rank, world_size, device); starts the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, resolve_device(device_arg)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_arg in ("auto", "cuda")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        set_cpu_threads(max(1, cpu_count() // world_size))
    return dist.get_rank(), world_size, device


def all_reduce_sum(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- one epoch

def to_model_input(images, device, prep, train: bool, generator=None):
    images = images.to(device, non_blocking=True)
    x = augment(images, prep, generator) if train else normalize(images, prep)
    return x.contiguous(memory_format=torch.channels_last)


def train_one_epoch(model, loader, optimizer, loss_fn, device, prep, amp, scaler, desc="train", quiet=False,
                    ema: ModelEma | None = None, mixup: float = 0.0, teachers: Teachers | None = None,
                    distill_weight: float = 0.7):
    """One pass over the training data; returns the mean training loss (over all processes)."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=quiet)
    for images, labels in bar:
        if len(labels) == 0:
            if dist.is_available() and dist.is_initialized():
                # Skipping would leave the other processes waiting for this one's gradients for ever.
                raise FERError("a whole training batch was unreadable images: check the data set's files")
            continue
        x = to_model_input(images, device, prep, train=True)
        y = labels.to(device, non_blocking=True)
        y2, lam = y, 1.0
        if mixup > 0:
            x, y, y2, lam = mix_batch(x, y, mixup)
        soft = teachers.soft_targets(x) if teachers is not None else None
        with autocast(device, amp):
            logits, _ = model(x)
        logits = logits.float()
        loss = lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y2) if lam < 1 else loss_fn(logits, y)
        if soft is not None:
            loss = (1 - distill_weight) * loss + distill_weight * distillation_loss(logits, soft, teachers.temperature)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / count:.4f}")
    total, count = all_reduce_sum([total, count], device)
    return total / max(count, 1)


@torch.inference_mode()
def collect_logits(model, loader, device, prep, amp=None):
    """(logits, labels) as numpy arrays over this process's share of a loader."""
    model.eval()
    logits, labels = [], []
    for images, y in loader:
        if len(y):
            with autocast(device, amp):
                out, _ = model(to_model_input(images, device, prep, train=False))
            logits.append(out.float().cpu())
            labels.append(y.cpu())
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def calibrate(model, val_loader, device, prep, amp, log=print) -> dict:
    """Fit the temperature on the validation split; the dict the checkpoint and ONNX metadata store."""
    logits, labels = collect_logits(model, val_loader, device, prep, amp)
    result = fit_calibration(logits, labels, "validation split")
    log(f"calibration: temperature {result['temperature']:.3f} fitted on the validation split; expected "
        f"calibration error {result['ece_before'] * 100:.2f}% -> {result['ece_after'] * 100:.2f}%")
    return result


@torch.inference_mode()
def evaluate(model, loader, device, prep, amp=None, loss_fn=None, desc="val", quiet=False):
    """Mean loss, accuracy and per-image predictions (this process's share) over a loader."""
    model.eval()
    loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
    total, correct, count = 0.0, 0, 0
    predictions, targets = [], []
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=quiet):
        if len(labels) == 0:
            continue
        x = to_model_input(images, device, prep, train=False)
        y = labels.to(device)
        with autocast(device, amp):
            logits, _ = model(x)
        logits = logits.float()
        total += loss_fn(logits, y).item() * len(y)
        pred = logits.argmax(1)
        correct += (pred == y).sum().item()
        count += len(y)
        predictions.append(pred.cpu())
        targets.append(y.cpu())
    total, correct, count = all_reduce_sum([total, correct, count], device)
    preds = torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
    targs = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
    return total / max(count, 1), correct / max(count, 1), preds, targs


# ----------------------------------------------------------------------------- the whole run

def class_weights(labels: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_(min=1)
    weights = counts.sum() / (num_classes * counts)
    if mode == "sqrt":
        weights = weights.sqrt()
    return weights / (weights * counts).sum() * counts.sum()   # keeps the mean weight per image at 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_outputs(args) -> None:
    """Every file the run writes, checked before the first epoch: distinct, writable, and no existing file
    replaced without --overwrite. Resuming from the run's own X.last.pth continues its files (X.pth,
    X.last.pth, X_metrics.json and --output_onnx); resuming from any other file protects them as usual."""
    outputs = {"--output_model": args.output_model, "--output_model's last checkpoint": last_checkpoint_path(args.output_model),
               "--output_model's history": metrics_path(args.output_model), "--output_onnx": args.output_onnx}
    own = list(outputs.values()) if args.resume and same_file(args.resume, last_checkpoint_path(args.output_model)) else []
    if args.resume and not own and same_file(args.resume, args.output_model) and not args.overwrite:
        raise FERError(f"--resume {args.resume} is also --output_model: training would replace this model with "
                       f"the run's first epoch; choose another --output_model, resume from "
                       f"{last_checkpoint_path(args.output_model)}, or pass --overwrite")
    try:
        check_output_files(outputs, args.overwrite, replaceable=own)
    except FERError as e:
        if "already exists" not in str(e):
            raise
        raise FERError(f"{e}, --resume {last_checkpoint_path(args.output_model)} to continue that run, "
                       f"or choose --output_model/--output_onnx") from None


def split_dirs(dataset_path) -> tuple[Path, Path]:
    """dataset_path/train_new and dataset_path/val_new, which validation_split.py makes."""
    root = Path(dataset_path)
    train_dir, val_dir = root / "train_new", root / "val_new"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise FERError(f"{d} not found: split the training set first with "
                           f"'python validation_split.py --dataset_path {root}'")
    return train_dir, val_dir


def build_loaders(args, prep, rank, world_size, device, log):
    train_dir, val_dir = split_dirs(args.dataset_path)
    train_samples, class_names = fdata.list_samples(train_dir)
    val_samples, _ = fdata.list_samples(val_dir, class_names)
    size = cache_size(prep["input_size"])
    channels = prep["channels"]
    pin = device.type == "cuda"
    if args.no_cache:
        train = fdata.streaming_loader(train_samples, size, channels, args.batch_size, True, args.num_workers,
                                       args.seed, rank, world_size, pin, drop_last=True)
        val = fdata.streaming_loader(val_samples, size, channels, args.batch_size * 2, False, args.num_workers,
                                     rank=rank, world_size=world_size, pin_memory=pin)
        train_labels = torch.tensor([label for _, label in train_samples])
    else:
        quiet = rank != 0
        timgs, train_labels, tbad = fdata.load_into_memory(train_samples, size, channels, args.num_workers, "caching train", quiet)
        vimgs, vlabels, vbad = fdata.load_into_memory(val_samples, size, channels, args.num_workers, "caching val", quiet)
        for bad in (tbad, vbad):
            if bad:
                log(f"warning: skipped {len(bad)} unreadable image(s), e.g. {bad[0]}")
        if pin:
            timgs, vimgs = timgs.pin_memory(), vimgs.pin_memory()
        train = fdata.MemoryLoader(timgs, train_labels, args.batch_size, True, args.seed, rank, world_size, drop_last=True)
        val = fdata.MemoryLoader(vimgs, vlabels, args.batch_size * 2, False, rank=rank, world_size=world_size)
    if len(train) == 0:
        raise FERError(f"--batch_size {args.batch_size} is larger than the {len(train_samples)} training images"
                       f"{f' per process ({world_size} processes)' if world_size > 1 else ''}: no full batch to "
                       f"train on; lower --batch_size")
    log(f"data: {len(train_samples)} train / {len(val_samples)} val images in {len(class_names)} classes "
        f"({', '.join(class_names)}), {'streamed from disk' if args.no_cache else 'cached in memory'}")
    return train, val, class_names, train_labels


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


def make_scheduler(optimizer, args):
    if args.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs), eta_min=args.learning_rate * 0.01)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=args.gamma)


def set_epoch(loader, epoch):
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)


def train(args, model_type: str, model_config: dict) -> dict:
    """Train a model of `model_type` built from `model_config` as `args` say; returns the best metrics."""
    rank, world_size, device = init_distributed(args.device)
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    try:
        if device.type == "cpu" and world_size == 1:
            set_cpu_threads()
        seed_everything(args.seed + rank)
        if args.resume and args.init_from:
            raise FERError("--resume continues a run, --init_from starts a new one from a trained model: give one of them")
        check_outputs(args)

        # The data's class folders decide the classes, and so the size of the classifier head.
        class_names, _ = fdata.find_classes(split_dirs(args.dataset_path)[0])
        resume = load_checkpoint(args.resume, expected_type=model_type) if args.resume else None
        if resume is not None:
            if resume["class_names"] != class_names:
                raise FERError(f"{args.resume} was trained on classes {', '.join(resume['class_names'])}, the data "
                               f"has {', '.join(class_names)}: to train on new classes, use --init_from instead")
            model = model_from_checkpoint(resume, args.resume)
            model_config = resume["model_config"]
            prep = resume["preprocessing"]
        else:
            model = create_model(model_type, num_classes=len(class_names), **model_config)
            prep = default_preprocessing(model_type, model)
            if args.init_from:
                prep = init_from_checkpoint(model, args.init_from, model_type, model_config, class_names, log)

        train_loader, val_loader, class_names, train_labels = build_loaders(args, prep, rank, world_size, device, log)

        model = model.to(device).to(memory_format=torch.channels_last)
        if world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        amp = amp_dtype(device, args.amp)
        scaler = grad_scaler(device, amp)
        weights = class_weights(train_labels, len(class_names), args.class_weights)
        loss_fn = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                                            label_smoothing=args.label_smoothing)
        val_loss_fn = torch.nn.CrossEntropyLoss()   # plain loss: comparable across settings
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
        scheduler = make_scheduler(optimizer, args)
        stopper = EarlyStopping(args.patience, args.extra_epochs)
        ema = ModelEma(model, args.ema_decay) if args.ema_decay > 0 else None
        teachers = Teachers(args.teacher, class_names, prep, device, args.distill_temperature) if args.teacher else None
        history, start_epoch = [], 1
        if resume is not None:
            start_epoch = resume.get("epoch", 0) + 1
            history = list(resume.get("history", []))
            if "optimizer" in resume:
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                stopper.load_state_dict(resume["early_stopping"])
                if ema is not None and "ema" in resume:
                    ema.load_state_dict(resume["ema"])
            else:
                log(f"warning: {args.resume} has no optimizer state (a best-model file); optimizer starts afresh")
            log(f"resuming from {args.resume} at epoch {start_epoch}")

        log(f"model: {model_type}, {count_parameters(model) / 1e6:.2f} M parameters, input "
            f"{prep['channels']}x{prep['input_size'][0]}x{prep['input_size'][1]}; device {device}"
            f"{f' x {world_size} processes' if world_size > 1 else ''}; AMP {amp or 'off'}"
            f"{f'; EMA {ema.decay}' if ema else ''}{f'; mixup {args.mixup}' if args.mixup > 0 else ''}"
            f"{f'; distilling from {len(args.teacher)} teacher(s) at T={args.distill_temperature}' if teachers else ''}")
        run_args = {k: v for k, v in vars(args).items()}

        def checkpoint(epoch, metrics, with_state):
            # The best-model file holds the weights that were validated (the EMA's, when on); the last-state
            # file holds the live weights plus everything --resume needs.
            extra = {"epoch": epoch, "metrics": metrics, "args": run_args, "history": history}
            if with_state:
                extra.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                             early_stopping=stopper.state_dict())
                if ema is not None:
                    extra["ema"] = ema.state_dict()
            weights = model if with_state or ema is None else ema.module
            return make_checkpoint(weights, model_type, model_config, class_names, prep, **extra)

        best = next((h for h in history if h["val_loss"] == stopper.best), None)
        epoch = start_epoch - 1
        for epoch in range(start_epoch, args.epochs + 1):
            started = time.time()
            set_epoch(train_loader, epoch)
            lr = optimizer.param_groups[0]["lr"]
            train_loss = train_one_epoch(model, train_loader, optimizer, loss_fn, device, prep, amp, scaler,
                                         desc=f"epoch {epoch}/{args.epochs}", quiet=not is_main, ema=ema,
                                         mixup=args.mixup, teachers=teachers, distill_weight=args.distill_weight)
            val_loss, val_acc, _, _ = evaluate(ema.module if ema else model, val_loader, device, prep, amp,
                                               val_loss_fn, quiet=not is_main)
            scheduler.step()
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise FERError(f"training diverged at epoch {epoch} (train loss {train_loss}, val loss {val_loss}): "
                               f"nothing was saved for this epoch; lower --learning_rate or try --amp off")
            previous_best = stopper.best
            status = stopper.step(val_loss)
            improvement = previous_best - val_loss if math.isfinite(previous_best) else float("nan")
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                   "improvement": improvement, "status": status, "seconds": round(time.time() - started, 1)}
            history.append(row)
            change = f"{improvement:+.4f}" if math.isfinite(improvement) else "   -   "
            log(f"epoch {epoch:3d}/{args.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                f"val_acc {val_acc * 100:6.2f}%  lr {lr:.2e}  improvement {change}  "
                f"{stopper.describe(status)}  [{row['seconds']:.0f}s]")
            if is_main:
                if status in ("improved", "resumed"):
                    best = row
                    save_checkpoint(checkpoint(epoch, {"val_loss": val_loss, "val_acc": val_acc}, False), args.output_model)
                save_checkpoint(checkpoint(epoch, {"val_loss": val_loss, "val_acc": val_acc}, True),
                                last_checkpoint_path(args.output_model))
                write_json(metrics_path(args.output_model), {"model_type": model_type, "class_names": class_names,
                                                             "best": best, "history": history})
            if status == "stop":
                log(f"early stopping at epoch {epoch}: no lower validation loss in {args.patience} + "
                    f"{args.extra_epochs} epochs")
                break
        if is_main and best is None:
            raise FERError("no epoch was trained (is --epochs below the resumed epoch?)")
        if is_main:
            final = load_checkpoint(args.output_model, expected_type=model_type)
            best_model = model_from_checkpoint(final, args.output_model)
            log(f"best epoch {best['epoch']}: val_loss {best['val_loss']:.4f}, val_acc {best['val_acc'] * 100:.2f}% "
                f"-> {args.output_model}")
            final["calibration"] = calibrate(best_model.to(device), val_loader, device, prep, amp, log)
            save_checkpoint(final, args.output_model)
            export_onnx(best_model, args.output_onnx, model_type, class_names, prep, calibration=final["calibration"])
            log(f"ONNX model -> {args.output_onnx}; history -> {metrics_path(args.output_model)}")
        return best
    finally:
        clear_gpu_memory()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
