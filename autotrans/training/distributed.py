"""DistributedDataParallel plumbing: process group setup, per-rank batch sizes, loss averaging.

Kept apart from the loop so the loop reads the same with one process or many: every helper is a no-op
when ``world == 1``.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch
import torch.distributed as dist


def free_port() -> int:
    """A free TCP port for the rendezvous (tests run several DDP jobs; a fixed port would collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_process_group(rank: int, world: int, port: int, device: torch.device) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)


def rank_batch_size(global_batch: int, rank: int, world: int) -> int:
    """Split the plan's batch over ranks (nnU-Net style); every rank gets at least one sample."""
    base, extra = divmod(global_batch, world)
    return max(1, base + (1 if rank < extra else 0))


def ddp_wrapper(device: torch.device, world: int) -> Callable[[torch.nn.Module], torch.nn.Module] | None:
    """The ``wrap`` for ``Family.wrap_networks``; networks without trainable parameters stay unwrapped.

    ``broadcast_buffers=False``: GAN steps run a network several times per backward (real and fake through
    the discriminator); buffer broadcasts at every forward would clash with that and cost a collective each.
    """
    if world <= 1:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    def wrap(net: torch.nn.Module) -> torch.nn.Module:
        if not any(p.requires_grad for p in net.parameters()):
            return net
        ids = [device.index] if device.type == "cuda" else None
        return DDP(net, device_ids=ids, broadcast_buffers=False)

    return wrap


def average(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """Mean of per-rank scalars (every rank must pass the same keys)."""
    if world <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def gather_objects(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (pickled), on every rank; ``[obj]`` without DDP."""
    if world <= 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def cleanup(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
