"""The training loop both training scripts use: one epoch, one evaluation loop, and `train`, the whole run.

Runs on one device, or under `torchrun --nproc_per_node=N` with DistributedDataParallel
(rank 0 logs, saves and exports; each rank trains on its own share of every epoch).
Its parts live beside it: the flags in training_args, early stopping in early_stopping, EMA, mixup and
distillation in recipes, the process group in distributed, checkpoint surgery (--init_from) in checkpoint.
"""

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from fer_common.model.calibration import fit_calibration
from fer_common.model.checkpoint import init_from_checkpoint, load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from fer_common.device import amp_dtype, autocast, clear_gpu_memory, grad_scaler, set_cpu_threads
from fer_common.train.distributed import all_reduce_sum, average_gradients, close_distributed, init_distributed, is_distributed, set_epoch
from fer_common.train.early_stopping import EarlyStopping
from fer_common.errors import FERError
from fer_common.files import write_json
from fer_common.model.networks import count_parameters, create_model, default_preprocessing
from fer_common.model.onnx_export import export_onnx
from fer_common.datasets import ferplus, folders
from fer_common.train.augmentation import augment_views
from fer_common.train.data import build_loaders, class_weights, seed_everything, split_dirs, votes_record
from fer_common.preprocess import normalize
from fer_common.train.recipes import ModelEma, Teachers, VoteHead, distillation_loss, mix_batch, unwrap
from fer_common.train.args import (check_distillation_args, check_training_outputs, check_vote_args, last_checkpoint_path,
                                   metrics_path)


# ----------------------------------------------------------------------------- one epoch

@dataclass
class EpochOptions:
    """How one training epoch steps: the optimiser and loss, where and in what precision, and the recipes.

    `scaler` defaults to the grad scaler `amp` needs (a no-op off CUDA fp16)."""
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    device: torch.device
    prep: dict                              # the model's preprocessing (normalisation, augmentation)
    amp: torch.dtype | None = None
    scaler: object = None
    ema: ModelEma | None = None
    mixup: float = 0.0                      # Beta(alpha, alpha) of mixup; 0 = off
    augmentation: str = "standard"          # augmentation.POLICIES: standard or broad
    teachers: Teachers | None = None
    distill_weight: float = 0.7             # share of the loss from the teachers' soft labels
    vote_head: VoteHead | None = None       # a second head learning FER+ votes (its loss is added)

    def __post_init__(self):
        if self.scaler is None:
            self.scaler = grad_scaler(self.device, self.amp)


def training_views(images, device, prep, policy: str = "standard"):
    """(teachers' view, student's view) of a uint8 training batch; see augmentation.augment_views."""
    teacher, student = augment_views(images.to(device, non_blocking=True), prep, policy=policy)
    student = student.contiguous(memory_format=torch.channels_last)
    return (student if teacher is student else teacher.contiguous(memory_format=torch.channels_last)), student


def _to_device(images, device, prep):
    x = normalize(images.to(device, non_blocking=True), prep)
    return x.contiguous(memory_format=torch.channels_last)


def train_one_epoch(model, loader, opts: EpochOptions, desc: str = "train", quiet: bool = False) -> float:
    """One pass over the training data; returns the mean training loss (over all processes)."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=quiet)
    for images, labels, *votes in bar:
        if len(labels) == 0:
            if is_distributed():
                # Skipping would leave the other processes waiting for this one's gradients for ever.
                raise FERError("a whole training batch was unreadable images: check the data set's files")
            continue
        teacher_x, x = training_views(images, opts.device, opts.prep, opts.augmentation)
        y = labels.to(opts.device, non_blocking=True)
        votes = votes[0].to(opts.device, non_blocking=True) if votes else None
        loss = _batch_loss(model, x, y, opts, teacher_x, votes)
        opts.optimizer.zero_grad(set_to_none=True)
        opts.scaler.scale(loss).backward()
        if opts.vote_head is not None:
            average_gradients(opts.vote_head)
        opts.scaler.step(opts.optimizer)
        opts.scaler.update()
        if opts.ema is not None:
            opts.ema.update(model)
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)   # printed at tqdm's own pace
    total, count = all_reduce_sum([total, count], opts.device)
    return total / max(count, 1)


def _batch_loss(model, x, y, opts: EpochOptions, teacher_x=None, votes=None) -> torch.Tensor:
    """The loss of one batch: cross-entropy (of both labels under mixup), blended with distillation if on,
    plus the vote head's loss on the embedding when on (`votes`: the batch's vote distributions).
    The teachers see `teacher_x` (the undegraded view of the same images), or x when it is None."""
    teacher_x = x if teacher_x is None else teacher_x
    y2, lam = y, 1.0
    if opts.mixup > 0:
        (x, teacher_x), y, y2, lam = mix_batch((x, teacher_x), y, opts.mixup)
    soft = opts.teachers.soft_targets(teacher_x) if opts.teachers is not None else None
    with autocast(opts.device, opts.amp):
        logits, embedding = model(x)
    logits = logits.float()
    loss = lam * opts.loss_fn(logits, y) + (1 - lam) * opts.loss_fn(logits, y2) if lam < 1 else opts.loss_fn(logits, y)
    if soft is not None:
        w = opts.distill_weight
        loss = (1 - w) * loss + w * distillation_loss(logits, soft, opts.teachers.temperature)
    if opts.vote_head is not None and votes is not None:
        loss = loss + opts.vote_head.loss(embedding, votes)
    return loss


# ----------------------------------------------------------------------------- evaluation

@torch.inference_mode()
def collect_logits(model, loader, device, prep, amp=None, desc: str = "val", quiet: bool = True):
    """(logits, labels) as CPU tensors over this process's share of a loader: the one evaluation loop."""
    model.eval()
    logits, labels = [], []
    for images, y in tqdm(loader, desc=desc, unit="batch", leave=False, disable=quiet):
        if len(y):
            with autocast(device, amp):
                out, _ = model(_to_device(images, device, prep))
            logits.append(out.float().cpu())
            labels.append(y.cpu())
    if not logits:
        return torch.zeros((0, 0)), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model, loader, device, prep, amp=None, loss_fn=None, desc: str = "val", quiet: bool = False):
    """Mean loss and accuracy over all processes, and this process's (predictions, targets), over a loader."""
    logits, targets = collect_logits(model, loader, device, prep, amp, desc, quiet)
    predictions = logits.argmax(1) if len(targets) else torch.empty(0, dtype=torch.long)
    total = correct = 0.0
    if len(targets):
        loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
        total = loss_fn(logits.to(device), targets.to(device)).item() * len(targets)
        correct = (predictions == targets).sum().item()
    total, correct, count = all_reduce_sum([total, correct, len(targets)], device)
    return total / max(count, 1), correct / max(count, 1), predictions, targets


def calibrate(model, val_loader, device, prep, amp, log=print) -> dict:
    """Fit the temperature on the validation split; the dict the checkpoint and ONNX metadata store."""
    logits, labels = collect_logits(model, val_loader, device, prep, amp)
    result = fit_calibration(logits.numpy(), labels.numpy(), "validation split")
    if "note" in result:
        log(f"calibration: temperature left at 1 ({result['note']} in the validation split)")
    else:
        log(f"calibration: temperature {result['temperature']:.3f} fitted on the validation split; expected "
            f"calibration error {result['ece_before'] * 100:.2f}% -> {result['ece_after'] * 100:.2f}%")
    return result


# ----------------------------------------------------------------------------- optimisation

def make_scheduler(optimizer, args):
    if args.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs), eta_min=args.learning_rate * 0.01)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=args.gamma)


def make_epoch_options(args, model, train_labels, class_names, prep: dict, device) -> EpochOptions:
    """The optimiser, class-weighted loss, precision and recipes (EMA, mixup, teachers) that `args` ask for."""
    weights = class_weights(train_labels, len(class_names), args.class_weights)
    vote_head = None
    if args.vote_head:
        vote_head = VoteHead(unwrap(model).classifier[-1].in_features, args.vote_head_weight).to(device)
    params = list(model.parameters()) + (list(vote_head.parameters()) if vote_head else [])
    return EpochOptions(
        optimizer=torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay),
        loss_fn=torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                                          label_smoothing=args.label_smoothing),
        device=device, prep=prep, amp=amp_dtype(device, args.amp),
        ema=ModelEma(model, args.ema_decay) if args.ema_decay > 0 else None, mixup=args.mixup,
        augmentation=args.augmentation,
        teachers=Teachers(args.teacher, class_names, prep, device, args.distill_temperature,
                          mirror=args.teacher_tta) if args.teacher else None,
        distill_weight=args.distill_weight, vote_head=vote_head)


# ----------------------------------------------------------------------------- the whole run

@dataclass
class Run:
    """One training run: what is trained on what, how it steps, and the state that --resume restores."""
    model_type: str
    model_config: dict
    class_names: list
    prep: dict
    model: torch.nn.Module                  # DistributedDataParallel under torchrun
    train_loader: object
    val_loader: object
    opts: EpochOptions
    scheduler: object
    stopper: EarlyStopping
    rank: int = 0
    history: list = field(default_factory=list)
    start_epoch: int = 1
    votes: dict | None = None               # the FER+ votes trained on (votes_record)
    val_loss_fn: torch.nn.Module = field(default_factory=torch.nn.CrossEntropyLoss)   # plain: comparable across settings

    @property
    def validated(self) -> torch.nn.Module:
        """The weights that are validated and saved as the best model: the EMA's when on."""
        return self.opts.ema.module if self.opts.ema is not None else self.model

    def state_dict(self) -> dict:
        """The training state --resume restores (optimiser, scheduler, early stopping, EMA)."""
        state = {"optimizer": self.opts.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "early_stopping": self.stopper.state_dict()}
        if self.opts.ema is not None:
            state["ema"] = self.opts.ema.state_dict()
        if self.opts.vote_head is not None:
            state["vote_head"] = self.opts.vote_head.state_dict()
        return state

    def load_state_dict(self, ckpt: dict, path, log=print) -> None:
        """Continue from a checkpoint: its epoch, history and (in a *.last.pth file) training state."""
        self.start_epoch = ckpt.get("epoch", 0) + 1
        self.history = list(ckpt.get("history", []))
        if "optimizer" in ckpt:
            self.opts.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.stopper.load_state_dict(ckpt["early_stopping"])
            if self.opts.ema is not None and "ema" in ckpt:
                self.opts.ema.load_state_dict(ckpt["ema"])
            if self.opts.vote_head is not None:
                self.opts.vote_head.load_state_dict(ckpt["vote_head"])
        else:
            log(f"warning: {path} has no optimizer state (a best-model file); optimizer starts afresh")
        log(f"resuming from {path} at epoch {self.start_epoch}")

    def checkpoint(self, epoch: int, metrics: dict, args, with_state: bool) -> dict:
        """The best-model file holds the validated weights; the last-state file the live weights and the state."""
        extra = {"epoch": epoch, "metrics": metrics, "args": dict(vars(args)), "history": self.history}
        if self.votes:
            extra["votes"] = self.votes
        if with_state:
            extra.update(self.state_dict())
        weights = self.model if with_state else self.validated
        return make_checkpoint(weights, self.model_type, self.model_config, self.class_names, self.prep, **extra)


def start_model(args, model_type: str, model_config: dict, log):
    """The model to train: the --resume checkpoint's, or a fresh one (its features --init_from a trained model).

    Returns (model, model_config, preprocessing, the resumed checkpoint or None)."""
    train_dir = split_dirs(args.dataset_path)[0]
    # The data decide the classes: the folders, or with --votes FER+'s eight.
    class_names = list(ferplus.CLASS_NAMES) if args.votes else folders.find_classes(train_dir)[0]
    if not args.resume:
        model = create_model(model_type, num_classes=len(class_names), **model_config)
        prep = default_preprocessing(model_type, model)
        if args.init_from:
            prep = init_from_checkpoint(model, args.init_from, model_type, model_config, class_names, log)
        return model, model_config, prep, None
    resume = load_checkpoint(args.resume, expected_type=model_type)
    trained, asked = resume.get("votes"), votes_record(args)
    if (trained or {}).get("mode") != (asked or {}).get("mode"):
        def targets(v):
            if not v:
                return "the folders' labels"
            if v.get("mode") == "head":
                return f"the folders' labels with a FER+ vote head ({v.get('file')})"
            return f"FER+ votes ({v.get('file')}, --vote_mode {v.get('mode')})"
        raise FERError(f"{args.resume} was trained on {targets(trained)}, this run asks for {targets(asked)}: "
                       f"give the same --votes, --vote_mode and --vote_head to resume")
    if trained and trained.get("sha256") != asked["sha256"]:
        log(f"warning: {args.votes or args.vote_head} is not the votes file {args.resume} started with ({trained.get('file')}): "
            f"the targets change from here on")
    if resume["class_names"] != class_names:
        raise FERError(f"{args.resume} was trained on classes {', '.join(resume['class_names'])}, the data "
                       f"has {', '.join(class_names)}: to train on new classes, use --init_from instead")
    return model_from_checkpoint(resume, args.resume), resume["model_config"], resume["preprocessing"], resume


def prepare_run(args, model_type: str, model_config: dict, rank: int, world_size: int, device, log) -> Run:
    """Model, data, optimiser and recipes as `args` say, resumed if asked; logs what the run is."""
    model, model_config, prep, resume = start_model(args, model_type, model_config, log)
    train_loader, val_loader, class_names, train_labels = build_loaders(args, prep, rank, world_size, device, log)
    model = model.to(device).to(memory_format=torch.channels_last)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opts = make_epoch_options(args, model, train_labels, class_names, prep, device)
    run = Run(model_type, model_config, class_names, prep, model, train_loader, val_loader, opts,
              make_scheduler(opts.optimizer, args), EarlyStopping(args.patience, args.extra_epochs), rank,
              votes=votes_record(args))
    if resume is not None:
        run.load_state_dict(resume, args.resume, log)
    log(f"model: {model_type}, {count_parameters(model) / 1e6:.2f} M parameters, input "
        f"{prep['channels']}x{prep['input_size'][0]}x{prep['input_size'][1]}; device {device}"
        f"{f' x {world_size} processes' if world_size > 1 else ''}; AMP {opts.amp or 'off'}"
        f"; augmentation {opts.augmentation}{f'; EMA {opts.ema.decay}' if opts.ema else ''}{f'; mixup {args.mixup}' if args.mixup > 0 else ''}"
        f"{f'; distilling from {len(args.teacher)} teacher(s) at T={args.distill_temperature}' if args.teacher else ''}"
        f"{' with mirror TTA' if args.teacher and opts.teachers.mirror else ''}")
    return run


def run_epoch(run: Run, epoch: int, epochs: int) -> dict:
    """Train and validate one epoch, step the scheduler and early stopping; returns the epoch's history row."""
    started, quiet = time.time(), run.rank != 0
    set_epoch(run.train_loader, epoch)
    lr = run.opts.optimizer.param_groups[0]["lr"]
    train_loss = train_one_epoch(run.model, run.train_loader, run.opts, desc=f"epoch {epoch}/{epochs}", quiet=quiet)
    val_loss, val_acc, _, _ = evaluate(run.validated, run.val_loader, run.opts.device, run.prep, run.opts.amp,
                                       run.val_loss_fn, quiet=quiet)
    run.scheduler.step()
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise FERError(f"training diverged at epoch {epoch} (train loss {train_loss}, val loss {val_loss}): "
                       f"nothing was saved for this epoch; lower --learning_rate or try --amp off")
    previous_best = run.stopper.best
    status = run.stopper.step(val_loss)
    improvement = previous_best - val_loss if math.isfinite(previous_best) else float("nan")
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
           "improvement": improvement, "status": status, "seconds": round(time.time() - started, 1)}
    run.history.append(row)
    return row


def save_epoch(run: Run, args, row: dict, best: dict) -> None:
    """After an epoch: the best model (if it improved), the last training state and the history."""
    metrics = {"val_loss": row["val_loss"], "val_acc": row["val_acc"]}
    if row["status"] in ("improved", "resumed"):
        save_checkpoint(run.checkpoint(row["epoch"], metrics, args, with_state=False), args.output_model)
    save_checkpoint(run.checkpoint(row["epoch"], metrics, args, with_state=True), last_checkpoint_path(args.output_model))
    write_json(metrics_path(args.output_model), {"model_type": run.model_type, "class_names": run.class_names,
                                                 **({"votes": run.votes} if run.votes else {}),
                                                 "best": best, "history": run.history})


def run_epochs(run: Run, args, log) -> dict | None:
    """Epochs from run.start_epoch to --epochs, or to a confirmed early stop; returns the best epoch's row."""
    best = next((h for h in run.history if h["val_loss"] == run.stopper.best), None)
    for epoch in range(run.start_epoch, args.epochs + 1):
        row = run_epoch(run, epoch, args.epochs)
        change = f"{row['improvement']:+.4f}" if math.isfinite(row["improvement"]) else "   -   "
        log(f"epoch {epoch:3d}/{args.epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_acc {row['val_acc'] * 100:6.2f}%  lr {row['lr']:.2e}  improvement {change}  "
            f"{run.stopper.describe(row['status'])}  [{row['seconds']:.0f}s]")
        if row["status"] in ("improved", "resumed"):
            best = row
        if run.rank == 0:
            save_epoch(run, args, row, best)
        if row["status"] == "stop":
            log(f"early stopping at epoch {epoch}: no lower validation loss in {args.patience} + "
                f"{args.extra_epochs} epochs")
            break
    return best


def finish(run: Run, args, best: dict, log) -> None:
    """The best model calibrated on the validation split, saved again with its temperature, and exported."""
    final = load_checkpoint(args.output_model, expected_type=run.model_type)
    best_model = model_from_checkpoint(final, args.output_model)
    log(f"best epoch {best['epoch']}: val_loss {best['val_loss']:.4f}, val_acc {best['val_acc'] * 100:.2f}% "
        f"-> {args.output_model}")
    device = run.opts.device
    final["calibration"] = calibrate(best_model.to(device), run.val_loader, device, run.prep, run.opts.amp, log)
    save_checkpoint(final, args.output_model)
    export_onnx(best_model, args.output_onnx, run.model_type, run.class_names, run.prep, calibration=final["calibration"])
    log(f"ONNX model -> {args.output_onnx}; history -> {metrics_path(args.output_model)}")


def train(args, model_type: str, model_config: dict) -> dict:
    """Train a model of `model_type` built from `model_config` as `args` say; returns the best epoch's row."""
    rank, world_size, device = init_distributed(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)
    try:
        if device.type == "cpu" and world_size == 1:
            set_cpu_threads()
        seed_everything(args.seed + rank)
        if args.resume and args.init_from:
            raise FERError("--resume continues a run, --init_from starts a new one from a trained model: give one of them")
        check_distillation_args(args)
        check_vote_args(args)
        check_training_outputs(args)
        run = prepare_run(args, model_type, model_config, rank, world_size, device, log)
        best = run_epochs(run, args, log)
        if best is None:
            raise FERError("no epoch was trained (is --epochs below the resumed epoch?)")
        if rank == 0:
            finish(run, args, best, log)
        return best
    finally:
        clear_gpu_memory()
        close_distributed()
