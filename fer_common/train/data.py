"""What a training run learns from: the split folders, FER+ votes, the loaders, the loss weights, the seed."""

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from fer_common.datasets import ferplus, folders
from fer_common.errors import FERError
from fer_common.preprocess import cache_size
from fer_common.train import loaders as fdata


def class_weights(labels: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    """Loss weights from the training labels: class indices, or rows of target distributions (soft counts)."""
    if mode == "none":
        return None
    counts = labels.float().sum(0) if labels.ndim == 2 else torch.bincount(labels, minlength=num_classes).float()
    counts = counts.clamp_(min=1)
    weights = counts.sum() / (num_classes * counts)
    if mode == "sqrt":
        weights = weights.sqrt()
    return weights / (weights * counts).sum() * counts.sum()   # keeps the mean weight per image at 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_dirs(dataset_path) -> tuple[Path, Path]:
    """dataset_path/train_new and dataset_path/val_new, which validation_split.py makes."""
    root = Path(dataset_path)
    train_dir, val_dir = root / "train_new", root / "val_new"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise FERError(f"{d} not found: split the training set first with "
                           f"'python validation_split.py --dataset_path {root}'")
    return train_dir, val_dir


def vote_samples(args, train_dir: Path, val_dir: Path, log):
    """With --votes: the training images with a FER+ target (their labels are rows of the returned targets),
    those targets, and the validation images labelled with their FER+ majority label. Images without votes or
    without a FER+ label are left out, one line per split saying how many."""
    table = ferplus.read_votes(args.votes)
    halves = ((train_dir, args.vote_mode), (val_dir, "majority"))
    samples = [folders.list_samples(folder)[0] for folder, _ in halves]
    # Matched together: a file name in both halves (FER-2013 has a few in two class folders) is settled by folders.
    rows = np.split(table.match([path for half in samples for path, _ in half]), [len(samples[0])])
    splits = []
    for (folder, mode), half, half_rows in zip(halves, samples, rows):
        kept, labelled = ferplus.keep_labelled(table, half, mode, folder, half_rows)
        log(f"votes: {labelled.describe(len(half), folder.name)}")
        splits.append((kept, labelled))
    (train, labelled), (val, val_labelled) = splits
    targets = torch.from_numpy(labelled.labels if args.vote_mode == "majority" else labelled.targets)
    train_samples = [(path, row) for row, (path, _) in enumerate(train)]
    val_samples = [(path, int(label)) for (path, _), label in zip(val, val_labelled.labels)]
    return train_samples, targets, val_samples


def vote_head_targets(args, train_samples, log) -> torch.Tensor:
    """With --vote_head: each training image's FER+ vote distribution (N x 8 over ferplus.CLASS_NAMES), a row
    of zeros where it has none (no votes, or FER+ leaves it out); the head learns only the others."""
    table = ferplus.read_votes(args.vote_head)
    labelled = ferplus.label_images(table, [path for path, _ in train_samples], "crossentropy")
    what = labelled.describe(len(train_samples), "train")
    if not len(labelled.kept):
        raise FERError(f"--vote_head {args.vote_head}: {what}; are these the votes of this data set?")
    log(f"vote head: {what}")
    targets = torch.zeros(len(train_samples), ferplus.N_EMOTIONS)
    targets[torch.from_numpy(labelled.kept)] = torch.from_numpy(labelled.targets)
    return targets


def votes_record(args) -> dict | None:
    """What a checkpoint says about the FER+ votes it was trained on (None without --votes or --vote_head)."""
    if not (args.votes or args.vote_head):
        return None
    path = args.votes or args.vote_head
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if args.vote_head:
        return {"file": Path(path).name, "sha256": digest, "mode": "head", "weight": args.vote_head_weight,
                "rule": "FER+ (Barsoum et al. 2016), crossentropy targets"}
    return {"file": Path(path).name, "sha256": digest, "mode": args.vote_mode,
            "rule": "FER+ (Barsoum et al. 2016)", "validation": "majority"}


def build_loaders(args, prep, rank, world_size, device, log):
    """(train loader, val loader, class names, train labels): cached in memory as uint8, or streamed (--no_cache).
    With --votes the classes are FER+'s and the labels come from the votes (see vote_samples)."""
    train_dir, val_dir = split_dirs(args.dataset_path)
    if args.votes:
        train_samples, train_targets, val_samples = vote_samples(args, train_dir, val_dir, log)
        class_names = list(ferplus.CLASS_NAMES)
    else:
        train_samples, class_names = folders.list_samples(train_dir)
        val_samples, _ = folders.list_samples(val_dir, class_names)
        train_targets = None
    head_targets = None
    if args.vote_head:       # the loaders' labels become positions: each maps to a class and a vote row
        head_targets = vote_head_targets(args, train_samples, log)
        train_targets = torch.tensor([label for _, label in train_samples])
        train_samples = [(path, i) for i, (path, _) in enumerate(train_samples)]
    size, channels, pin = cache_size(prep["input_size"]), prep["channels"], device.type == "cuda"
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
    if train_targets is not None:     # the loaders' labels are rows of the targets
        train = fdata.TargetLoader(train, train_targets, draw=bool(args.votes) and args.vote_mode == "probability",
                                   extra=head_targets)
        train_labels = train_targets[train_labels]
    log(f"data: {len(train_samples)} train / {len(val_samples)} val images in {len(class_names)} classes "
        f"({', '.join(class_names)}), {'streamed from disk' if args.no_cache else 'cached in memory'}"
        f"{f'; FER+ votes, {args.vote_mode} mode' if args.votes else ''}"
        f"{f'; a FER+ vote head (weight {args.vote_head_weight})' if args.vote_head else ''}")
    return train, val, class_names, train_labels


