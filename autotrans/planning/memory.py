"""One memory model for every family: the activation memory a training step keeps for backward, counted by
autograd itself on the meta device.

Why not nnU-Net's feature-map count for everything: it counts conv outputs of one architecture (conv,
instance norm, in-place LeakyReLU). The families differ in what a conv costs (GroupNorm + SiLU in MONAI's
networks, PReLU and sub-pixel convolution in SRGAN), in attention, and in how many passes a step keeps for
backward (CycleGAN's six generator passes; a discriminator on real and fake; a frozen U-Net that the
ControlNet's gradients still flow through). So each network is built from the plan on the ``meta`` device
(shapes only: no memory, no compute), run under ``torch.autograd.graph.saved_tensors_hooks``, and the bytes
of every distinct storage autograd saves for backward are summed (the network's own weights excluded: they
exist anyway), plus the pass's output. On the CPU the count equals what autograd keeps (tested).

- Attention (``scaled_dot_product_attention``, which MONAI's blocks call with ``use_flash_attention``) is
  counted with the memory-efficient kernels' footprint: query, key, value, output and the log-sum-exp per
  query — never a tokens x tokens matrix, which those kernels do not store (the meta device would otherwise
  run the math fallback and count one).
- A pass without gradient (a frozen encoder) is followed op by op: the peak of the tensors alive at once
  (a block's input, its intermediate results), freed as Python frees them.
- A step's estimate is the largest of its phases (a GAN's discriminator step and generator step free each
  other's graphs); within a phase the kept passes add up, and frozen passes, run one after the other before
  them, count with the largest.

Measured against the CPU allocator (``measured_peak_bytes``, ``benchmarks/memory_model.py``): every family's
measured / estimated ratio is within 35 % of the U-Net's own on real patch sizes (documentation/planning.md).

Calibration: the U-Net's own rule stays nnU-Net's (feature-map count against 560 M voxels per 8 GB at
batch 2, parity-tested). The same U-Net's saved bytes at the planned patch turn that reference into bytes:
the one budget every family's batch size is derived from (``budget_bytes``).
"""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

#: bytes of a trainable parameter in training: fp32 weight, gradient and Adam's two moments
TRAINABLE_PARAMETER_BYTES = 16
#: bytes of a frozen parameter (a frozen autoencoder, an EMA copy): the fp32 weight only
FROZEN_PARAMETER_BYTES = 4


class _EfficientAttention(torch.autograd.Function):
    """Shape-only stand-in for a fused attention kernel: saves what flash / memory-efficient kernels save."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


@contextlib.contextmanager
def _efficient_attention() -> Iterator[None]:
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _EfficientAttention.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _outputs(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    return []


@dataclass(frozen=True)
class Pass:
    """One network pass of a training step, per training sample.

    ``call(net, *inputs)`` runs it (default ``net(*inputs)``); ``inputs`` are per-sample shapes ``(C, D, H, W)``;
    ``samples``: how many samples per training sample go through (a discriminator on real and fake: 2);
    ``grad``: whether the step keeps it for backward (a frozen encoder under ``no_grad`` does not);
    ``frozen``: gradients flow through the network to its input but not into its weights (a discriminator in
    the generator's step, the ControlNet's prior), so autograd keeps less (no conv inputs for weight gradients).
    """

    network: nn.Module
    inputs: tuple[tuple[int, ...], ...]
    samples: int = 1
    grad: bool = True
    call: Callable[..., Any] | None = None
    frozen: bool = False


def _meta_inputs(shapes: Sequence[Sequence[int]], requires_grad: bool) -> list[torch.Tensor]:
    return [torch.zeros((1, *s), device="meta", requires_grad=requires_grad) for s in shapes]


def _state_storages(net: nn.Module) -> set[int]:
    """Storages of a network's parameters and buffers: persistent memory, not a pass's activations."""
    return {t.untyped_storage()._cdata for t in (*net.parameters(), *net.buffers())}


def saved_bytes(p: Pass) -> int:
    """Bytes autograd keeps for backward during one sample's pass (distinct storages, the network's own weights
    excluded: a conv saves its weight for the input gradient, but the weight exists anyway) plus its output."""
    seen: dict[int, int] = {}
    kept: list[torch.Tensor] = []  # alive while counting, so no storage address is reused
    state = _state_storages(p.network)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in state:
            seen[key] = max(seen.get(key, 0), _nbytes(t))
            kept.append(t)
        return t

    # inputs require grad so that a frozen network still records what backward through it needs
    xs = _meta_inputs(p.inputs, requires_grad=True)
    trainable = [q for q in p.network.parameters() if q.requires_grad]
    try:
        for q in trainable if p.frozen else []:
            q.requires_grad_(False)
        with _efficient_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = (p.call or (lambda n, *a: n(*a)))(p.network, *xs)
    finally:
        for q in trainable:
            q.requires_grad_(True)
    return sum(seen.values()) + sum(_nbytes(t) for t in _outputs(out))


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of storages created inside the mode that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in _outputs(out):
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self.sizes:
                self.sizes[key] = _nbytes(t)
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)
        return out


def transient_bytes(p: Pass) -> int:
    """Peak of a pass without gradient: the tensors it holds at once (a residual block's input, the block's
    intermediate results, ...), followed op by op on the meta device until Python frees them."""
    xs = _meta_inputs(p.inputs, requires_grad=False)
    tracker = _LiveBytes()
    with _efficient_attention(), torch.no_grad(), tracker:
        (p.call or (lambda n, *a: n(*a)))(p.network, *xs)
    return tracker.peak


_COUNTED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]]" = weakref.WeakKeyDictionary()


def pass_bytes(p: Pass) -> int:
    """Bytes of one pass for all its samples (see ``Pass``); a network's count per input is computed once."""
    memo = _COUNTED.setdefault(p.network, {})
    key = (p.inputs, p.grad, p.frozen, p.call.__code__ if p.call is not None else None)
    if key not in memo:
        memo[key] = saved_bytes(p) if p.grad else transient_bytes(p)
    return p.samples * memo[key]


def step_bytes(phases: Sequence[Sequence[Pass]]) -> int:
    """Activation bytes of a training step per training sample: the largest phase. Within a phase the passes
    kept for backward add up; passes without gradient (frozen encoders, run one after the other before the
    trained passes) hold only their own transient memory, so the largest of them counts."""
    def phase_bytes(phase: Sequence[Pass]) -> int:
        kept = sum(pass_bytes(p) for p in phase if p.grad)
        return max([kept] + [pass_bytes(p) // p.samples for p in phase if not p.grad])

    return max(phase_bytes(phase) for phase in phases)


def parameters(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network on the meta device (no memory, instant) for counting."""
    with torch.device("meta"):
        return build()


def budget_bytes(reference_voxels: float, unet_voxels: float, unet_bytes: int, reference_batch: int = 2) -> float:
    """The step's activation budget in bytes: nnU-Net's reference (feature-map voxels at ``reference_batch``),
    converted with the planned U-Net's own bytes per counted voxel."""
    return reference_batch * reference_voxels * unet_bytes / max(unet_voxels, 1.0)


def batch_size(step: float, budget: float, n_voxels_dataset: float, patch_size: Sequence[int], min_bs: int = 1,
               max_dataset_covered: float = 0.05) -> int:
    """As many samples as the budget holds (rounded down: a family's step is not a U-Net's, and nnU-Net's
    rounding to nearest can overshoot by up to 50 % at small batches), capped at 5 % of the dataset."""
    bs = math.floor(budget / max(step, 1.0))
    cap = round(n_voxels_dataset * max_dataset_covered / float(math.prod(patch_size)))
    return int(max(min(bs, cap), min_bs))


def extra_parameter_gb(trainable: int = 0, frozen: int = 0, reference_trainable: int = 0) -> float:
    """Parameter memory beyond the U-Net's (which nnU-Net's reference already contains): trainable weights with
    their gradients and Adam moments, frozen weights (autoencoder, EMA copies) alone."""
    extra = (trainable - reference_trainable) * TRAINABLE_PARAMETER_BYTES + frozen * FROZEN_PARAMETER_BYTES
    return max(extra, 0) / 1e9


def estimated_gb(step: float, batch: int, budget: float, gpu_memory_target_gb: float, extra_gb: float = 0.0) -> float:
    """Activations at ``batch`` as a share of the GPU target (the budget is the target's activation share) plus
    the extra parameter memory."""
    return round(gpu_memory_target_gb * batch * step / budget + extra_gb, 3)


def measured_peak_bytes(step: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator holds during ``step()`` beyond what it held before (what the memory model
    estimates, measured): torch's profiler records every allocation with the running total.

    Call it on a step that already ran once, so persistent state (optimizer moments) is not counted.
    """
    import json
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    memory = sorted((e for e in events if e.get("name") == "[memory]" and int(e["args"].get("Device Type", 0)) == 0),
                    key=lambda e: e["ts"])
    if not memory:
        return 0
    # the running total is the allocator's since profiling began in this process: relative to the step's start
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return int(max(e["args"]["Total Allocated"] for e in memory) - start)


def measure_family_step(family_cls: Any, plans: Any, configuration: Any, overrides: dict[str, Any] | None = None,
                        seed: int = 0, batch: int = 1) -> dict[str, int]:
    """Measured peak bytes of one training step of ``family_cls`` on the CPU (the second step: the first
    allocates the optimizer moments), with random inputs of the planned patch, per sample of ``batch``.

    Returns ``{"peak": ..., "activations": peak / batch}``; the parameters' gradients persist from the first step
    (``persistent_gradients``), as the optimizer moments do: the activation estimate leaves both out.
    (PyTorch's CPU convolution takes an im2col path with a large workspace for small single-sample inputs, an
    artefact of the CPU that a GPU does not have: small patches are better measured at batch 2.)
    """
    torch.manual_seed(seed)
    fam = family_cls(plans, configuration, {"num_epochs": 10, **(overrides or {})}, "cpu")
    fam.build()
    fam.configure_optimizers()
    patch = list(configuration.patch_size)
    n_in = len(plans.source_modalities)
    data = {"source": torch.rand(batch, n_in, *patch) * 2 - 1, "target": torch.rand(batch, 1, *patch) * 2 - 1,
            "mask": torch.ones(batch, 1, *patch)}
    fam.train_step(data, 0)
    with persistent_gradients():
        peak = measured_peak_bytes(lambda: fam.train_step(data, 1))
    return {"peak": peak, "activations": peak // batch}


@contextlib.contextmanager
def persistent_gradients() -> Iterator[None]:
    """Optimizers zero gradients in place instead of freeing them, so that a measured step does not count the
    parameters' gradients (allocated by the first step, like the optimizer moments) as step memory."""
    original = torch.optim.Optimizer.zero_grad

    def zero_grad(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        original(self, set_to_none=False)

    torch.optim.Optimizer.zero_grad = zero_grad  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.optim.Optimizer.zero_grad = original  # type: ignore[method-assign]
