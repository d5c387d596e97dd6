"""Training loaders over image-folder data sets: a streaming loader, and the in-memory uint8 cache.

Which images and classes a folder holds is fer_common.datasets.folders' walk (no PyTorch); this module turns
its (path, label) samples into batches.
"""

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fer_common.errors import FERError
from fer_common.preprocess import read_image, resize
from fer_common.train.distributed import set_epoch


class FolderDataset(torch.utils.data.Dataset):
    """Decodes images on access: uint8 C x H x W at `size`, and the label. Unreadable images give None."""

    def __init__(self, samples, size, channels: int):
        self.samples, self.size, self.channels = samples, list(size), channels

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        image = read_image(path, self.channels)
        if image is None:
            return None
        image = resize(image, self.size)
        image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(image)), label


def collate_skip_unreadable(batch):
    """Stack a batch, putting readable images of the same batch in the place of unreadable ones (None).

    The batch keeps its size, so every process of a distributed run takes the same number of steps; only a
    batch with no readable image at all comes back empty.
    """
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    good = [good[i % len(good)] for i in range(len(batch))]
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good])


def _stack_batch(batch):
    """Collate for caching: one stacked tensor per batch (one shared-memory handle, not hundreds)."""
    good = [b for b in batch if b is not None]
    images = torch.stack([b[0] for b in good]) if good else torch.empty(0, dtype=torch.uint8)
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, [i for i, b in enumerate(batch) if b is None]


def load_into_memory(samples, size, channels: int, num_workers: int = 0, desc: str = "loading",
                     quiet: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """Decode every image once into a uint8 N x C x H x W tensor (FER-2013 train: 28,709 x 48 x 48 = 66 MB).

    Returns images, labels and the paths that could not be read (skipped).
    """
    batch_size = 256
    loader = torch.utils.data.DataLoader(FolderDataset(samples, size, channels), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_stack_batch)
    images, labels, bad = [], [], []
    for b, (batch_images, batch_labels, bad_positions) in enumerate(
            tqdm(loader, desc=desc, unit="batch", disable=quiet, leave=False)):
        images.append(batch_images)
        labels.append(batch_labels)
        bad += [samples[b * batch_size + i][0] for i in bad_positions]
    images = [t for t in images if len(t)]
    if not images:
        raise FERError(f"no readable images among {len(samples)} files (first: {samples[0][0] if samples else '-'})")
    return torch.cat(images), torch.cat(labels), bad


class MemoryLoader:
    """Batches straight from in-memory tensors: a shuffled index slice per batch, no per-image work.

    With several processes (DistributedDataParallel) each rank takes its own share of every epoch's order,
    padded (as DistributedSampler does, by repeating the first indices) to the same length on every rank:
    ranks with different batch counts would wait for each other forever in the gradient all-reduce.
    """

    def __init__(self, images, labels, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _indices(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1 and n % self.world_size:
            per_rank = -(-n // self.world_size)
            pad = per_rank * self.world_size - n
            order = torch.cat([order, order.repeat(-(-pad // n))[:pad]])
        return order[self.rank::self.world_size]

    def __len__(self):
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._indices()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.images[idx], self.labels[idx]


class TargetLoader:
    """A loader whose labels are positions in `targets`, yielding (images, targets[positions]) instead: soft
    targets (vote distributions) ride through the loaders as row numbers. With `draw`, each batch gets one
    class drawn from each row's distribution (FER+'s probability mode), fresh every time an image is seen.
    With `extra` (a second target per image, as the vote head's), it yields (images, targets, extra) rows."""

    def __init__(self, loader, targets: torch.Tensor, draw: bool = False, extra: torch.Tensor | None = None):
        self.loader, self.targets, self.draw, self.extra = loader, targets, draw, extra

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch: int):
        set_epoch(self.loader, epoch)

    def __iter__(self):
        for images, positions in self.loader:
            targets = self.targets[positions]
            if self.draw and len(targets):
                targets = torch.multinomial(targets, 1).squeeze(1)
            yield (images, targets) if self.extra is None else (images, targets, self.extra[positions])


def streaming_loader(samples, size, channels, batch_size, shuffle, num_workers, seed=0, rank=0, world_size=1,
                     pin_memory=False, drop_last=False):
    """A DataLoader that decodes JPEGs every epoch (for data sets too big for memory).

    Its parameters are DataLoader's and DistributedSampler's, passed through as torchvision's references do, so
    the training loop sets them in one call."""
    dataset = FolderDataset(samples, size, channels)
    sampler = None
    if world_size > 1 or shuffle:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                      shuffle=shuffle, seed=seed, drop_last=drop_last)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate_skip_unreadable, pin_memory=pin_memory,
                                       drop_last=drop_last, persistent_workers=num_workers > 0)
