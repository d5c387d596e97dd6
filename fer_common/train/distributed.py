"""One process or several under `torchrun`: the process group, its rank and device, and summing across ranks."""

import os

import torch
import torch.distributed as dist

from fer_common.device import cpu_count, resolve_device, set_cpu_threads


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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
        # The processes on this node share its cores (torchrun --nnodes: WORLD_SIZE counts every node's).
        set_cpu_threads(max(1, cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    return dist.get_rank(), world_size, device


def close_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device) -> list[float]:
    """The sums of `values` over all processes (the values themselves in a single process)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def average_gradients(module: torch.nn.Module) -> None:
    """Average a module's gradients over all processes: for a module trained beside DistributedDataParallel's
    (the vote head), whose gradients DDP does not reduce. A no-op in a single process."""
    if not is_distributed():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def set_epoch(loader, epoch: int) -> None:
    """Tell a loader (or its DistributedSampler) the epoch, so each epoch shuffles differently on every rank."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)
