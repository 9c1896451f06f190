"""Benchmark: autotrans ``sliding_window`` against MONAI's ``sliding_window_inference`` (gaussian blending).

Same network, same volume (default 256 x 256 x 160), same patch (default 128^3), overlap 0.5, same tile
batch. Reports the minimum and median time per volume over repeats (both methods alternate run by run in
one process, so load from other processes hits both alike; on a shared machine the minimum is the fairer
figure), the largest absolute difference between the two outputs, and the peak memory of each method (a
fresh subprocess per method, so one cannot inherit the other's allocator high-water mark: peak RSS on the
CPU, ``max_memory_allocated`` on CUDA).

Usage::

    python benchmarks/sliding_window.py                       # CPU, small conv net
    python benchmarks/sliding_window.py --device cuda --bf16 --net unet --shape 256 256 192

Not run in CI (minutes on a CPU).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger("benchmark.sliding_window")


def build_net(kind: str, seed: int = 0) -> torch.nn.Module:
    """``small``: three 3x3x3 convs (the CPU benchmark); ``unet``: a planned-size PlainConvUNet (GPU);
    ``identity``: no network cost at all, so the timing is the tiling and blending overhead alone."""
    torch.manual_seed(seed)
    if kind == "identity":
        return torch.nn.Identity()
    if kind == "small":
        return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.LeakyReLU(0.01),
                                   torch.nn.Conv3d(8, 8, 3, padding=1), torch.nn.LeakyReLU(0.01),
                                   torch.nn.Conv3d(8, 1, 3, padding=1), torch.nn.Tanh())
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(1, 6, [32, 64, 128, 256, 320, 320], torch.nn.Conv3d, 3, [1, 2, 2, 2, 2, 2], 2, 1,
                         [2, 2, 2, 2, 2], conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True})


def make_predict(net: torch.nn.Module, device: torch.device, bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x).float()
    return predict


def _setup(a: argparse.Namespace) -> tuple[torch.device, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    net = build_net(a.net).to(device).eval()
    vol = torch.randn((1, 1, *a.shape), generator=torch.Generator().manual_seed(1)).to(device)
    return device, make_predict(net, device, a.bf16), vol


def _runner(method: str, a: argparse.Namespace, device: torch.device, predict: Callable, vol: torch.Tensor
            ) -> Callable[[], torch.Tensor]:
    patch = [a.patch] * 3
    if method == "autotrans":
        from autotrans.inference.windows import sliding_window

        def once() -> torch.Tensor:
            with torch.inference_mode():
                return sliding_window(vol[0], predict, patch, 1 - a.overlap, "gaussian", a.batch, device=device)
    else:
        from monai.inferers import sliding_window_inference

        def once() -> torch.Tensor:
            with torch.inference_mode():
                return sliding_window_inference(vol, patch, a.batch, predict, overlap=a.overlap, mode="gaussian")[0]
    return once


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def peak_memory(method: str, a: argparse.Namespace) -> dict[str, Any]:
    """Child process: one warm-up and one run of one method; its peak memory and output."""
    device, predict, vol = _setup(a)
    once = _runner(method, a, device, predict, vol)
    once()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, out = _timed(once, device)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    torch.save(out.float().cpu(), a.tmp / f"{method}.pt")
    return {"method": method, "peak_mib": peak,
            "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"}


def timings(a: argparse.Namespace) -> dict[str, list[float]]:
    """Both methods in one process, alternating run by run, so load from other processes hits both alike."""
    device, predict, vol = _setup(a)
    runners = {m: _runner(m, a, device, predict, vol) for m in ("monai", "autotrans")}
    for fn in runners.values():  # warm-up: oneDNN/cuDNN kernel selection, allocator growth
        fn()
    times: dict[str, list[float]] = {m: [] for m in runners}
    for _ in range(a.repeats):
        for m, fn in runners.items():
            times[m].append(_timed(fn, device)[0])
    return times


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160], metavar=("D", "H", "W"))
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=2, help="tiles per network call (both methods)")
    p.add_argument("--net", choices=("small", "unet", "identity"), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the network (accumulation stays fp32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tmp", type=Path, default=Path("/tmp/autotrans_bench_sw"))
    p.add_argument("--child", choices=("autotrans", "monai"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a.tmp.mkdir(parents=True, exist_ok=True)
    if a.child:
        print(json.dumps(peak_memory(a.child, a)))
        return 0
    mem = {}
    for method in ("monai", "autotrans"):  # separate processes: each method's own peak memory
        argv_child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", method]
        proc = subprocess.run(argv_child, capture_output=True, text=True)
        if proc.returncode != 0:
            logger.error("%s run failed:\n%s", method, proc.stderr[-3000:])
            return 2
        mem[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    times = timings(a)
    results = {m: {**mem[m], "times_s": times[m], "median_s": statistics.median(times[m])} for m in mem}
    for method, r in results.items():
        logger.info("%-9s min %.3f / median %.3f s per volume (runs: %s), peak %.0f MiB (%s)", method,
                    min(r["times_s"]), r["median_s"],
                    ", ".join(f"{t:.3f}" for t in r["times_s"]), r["peak_mib"], r["peak_kind"])
    ours, ref = torch.load(a.tmp / "autotrans.pt"), torch.load(a.tmp / "monai.pt")
    diff = float((ours - ref).abs().max())
    ratio = results["autotrans"]["median_s"] / results["monai"]["median_s"]
    logger.info("shape %s patch %d overlap %.2f batch %d net %s device %s bf16 %s threads %s",
                a.shape, a.patch, a.overlap, a.batch, a.net, a.device, a.bf16, torch.get_num_threads())
    logger.info("max |autotrans - monai| = %.3g; time ratio autotrans/monai = %.3f", diff, ratio)
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
