"""Fused training of B KD students (MobileNetV3-Small) vs HFTA-style rewrite, sequential and packed runs: images/s."""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from unittest import mock

import torch
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from kdsweep.fused import Fused, Solo
from kdsweep.losses import kd_losses
from kdsweep.models import build_model

ARCH, CLASSES, LR, WD, SMOOTHING, WARMUP = "mobilenet_v3_small", 10, 1e-3, 1e-4, 0.1, 3
KD_SETTINGS = [(2.0, 0.5), (4.0, 0.7), (6.0, 0.9)]  # (T, alpha), cycled over the members
# leaves without parameters that act per channel or per feature: they pass through the fused (N, B*C, ...) layout
_PASS_THROUGH = (nn.AdaptiveAvgPool2d, nn.ReLU, nn.Hardswish, nn.Hardsigmoid, nn.Dropout, nn.Identity, nn.Flatten)


class _StackedLinear(nn.Module):
    """B Linear(in, out) layers on (N, B*in) -> (N, B*out): one batched matmul, member b reads its own slice."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([lin.weight.detach().t() for lin in linears]).clone())  # (B, in, out)
        self.bias = nn.Parameter(torch.stack([lin.bias.detach() for lin in linears]).clone())  # (B, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, i, o = self.weight.shape
        n = x.shape[0]
        y = torch.baddbmm(self.bias.unsqueeze(1), x.reshape(n, b, i).transpose(0, 1), self.weight)  # (B, N, out)
        return y.transpose(0, 1).reshape(n, b * o)


def _fuse_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """B Conv2d(in, out, groups=g) -> Conv2d(B*in, B*out, groups=B*g) with the weights stacked along out."""
    c, b = convs[0], len(convs)
    new = nn.Conv2d(b * c.in_channels, b * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                    b * c.groups, c.bias is not None, c.padding_mode)
    with torch.no_grad():
        new.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            new.bias.copy_(torch.cat([m.bias for m in convs]))
    return new


def _fuse_bn(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    """B BatchNorm2d(C) -> BatchNorm2d(B*C) with stacked affine parameters and running statistics."""
    c = bns[0]
    new = nn.BatchNorm2d(len(bns) * c.num_features, c.eps, c.momentum, c.affine, c.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        new.num_batches_tracked.copy_(c.num_batches_tracked)
    return new


def _fuse_children(target: nn.Module, sources: list[nn.Module]) -> None:
    """Replace, in place, every Conv2d / BatchNorm2d / Linear under `target` by the fusion of the sources' ones."""
    for name, child in list(target.named_children()):
        peers = [getattr(s, name) for s in sources]
        if isinstance(child, nn.Conv2d):
            setattr(target, name, _fuse_conv(peers))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(target, name, _fuse_bn(peers))
        elif isinstance(child, nn.Linear):
            setattr(target, name, _StackedLinear(peers))
        elif isinstance(child, _PASS_THROUGH):
            continue
        elif isinstance(child, (nn.Sequential, SqueezeExcitation)) or type(child).__module__.startswith("torchvision"):
            _fuse_children(child, [getattr(s, name) for s in sources])
        else:
            raise TypeError(f"hfta_fuse: no rule for {type(child).__name__} at {name!r}")


class _HFTA(nn.Module):
    """The fused body on the input repeated B times; forward returns (B, N, classes)."""

    def __init__(self, body: nn.Module, b: int):
        super().__init__()
        self.body, self.b = body, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        y = self.body(x.repeat(1, self.b, 1, 1).contiguous(memory_format=fmt))  # (N, B*classes)
        return y.view(x.shape[0], self.b, -1).transpose(0, 1)


def hfta_fuse(models: list[nn.Module]) -> nn.Module:
    """HFTA-style rewrite of B same-shaped MobileNetV3-Small models: activations carried as (N, B*C, H, W)."""
    body = copy.deepcopy(models[0])
    _fuse_children(body, models)
    return _HFTA(body, len(models))


def check_hfta(b: int = 3, size: int = 32) -> float:
    """Max |hfta_fuse(models)(x)[i] - models[i](x)| in eval mode (random weights and BN statistics); prints it."""
    models = []
    for i in range(b):
        torch.manual_seed(i)
        m = build_model(ARCH, CLASSES, "none", 0.1).eval()
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            with torch.no_grad():
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.1)
        models.append(m)
    fused = hfta_fuse(models).eval()
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        out = fused(x)
        diff = max((out[i] - m(x)).abs().max().item() for i, m in enumerate(models))
    print(f"HFTA equivalence (B={b}, eval, fp32): max |diff| = {diff:.2e} -> {'PASS' if diff <= 1e-4 else 'FAIL'}")
    return diff


def _data(batch: int, size: int, device: torch.device, b: int) -> tuple[torch.Tensor, ...]:
    """Random channels_last inputs, labels, fixed teacher logits and the members' (T, alpha)."""
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    t = torch.randn(batch, CLASSES, device=device) * 3
    kd = list(itertools.islice(itertools.cycle(KD_SETTINGS), b))
    temps = torch.tensor([k[0] for k in kd], device=device)
    alphas = torch.tensor([k[1] for k in kd], device=device)
    return x, y, t, temps, alphas


def _students(b: int, device: torch.device, first_seed: int = 0) -> list[nn.Module]:
    """B freshly initialised students (seeds first_seed...), channels_last on `device`, as the engine prepares them."""
    out = []
    for i in range(b):
        torch.manual_seed(first_seed + i)
        out.append(build_model(ARCH, CLASSES, "none", 0.1).to(device, memory_format=torch.channels_last).train())
    return out


def _kd_step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
             data: tuple[torch.Tensor, ...], amp: bool, loss_fn: Callable[..., torch.Tensor] | None = None) -> None:
    """One engine-style step: (bf16 autocast) forward, kd_losses, sum backward, one AdamW step; no host sync."""
    x, y, t, temps, alphas = data
    if loss_fn is None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(x)
        losses = kd_losses(logits, t, y, temps, alphas, SMOOTHING)
    else:
        losses = loss_fn(x, y, t, temps, alphas)
    opt.zero_grad(set_to_none=True)
    losses.sum().backward()
    opt.step()


def _timed(step: Callable[[], None], steps: int, device: torch.device, warmup: int = WARMUP) -> float:
    """Seconds for `steps` calls of `step` after `warmup` untimed ones (synchronised on CUDA)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _packed_worker(rank: int, b: int, size: int, batch: int, steps: int, device: str, threads: int,
                   barrier: Barrier, queue: Queue) -> None:
    """One packed trial: a Solo student warmed up, then `steps` timed steps from the common barrier."""
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, threads // b))
    solo = Solo(_students(1, dev, rank)[0], LR, WD)
    x, y, t, temps, alphas = _data(batch, size, dev, b)
    data = (x, y, t, temps[rank:rank + 1], alphas[rank:rank + 1])
    for _ in range(WARMUP):
        _kd_step(solo.forward, solo.opt, data, dev.type == "cuda")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    barrier.wait()
    t0 = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes on Linux
    _timed(lambda: _kd_step(solo.forward, solo.opt, data, dev.type == "cuda"), steps, dev, warmup=0)
    queue.put((t0, time.perf_counter()))


def _packed(b: int, size: int, batch: int, steps: int, device: torch.device, threads: int) -> float:
    """Wall seconds from the common start barrier to the last of B spawned single-student processes finishing."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(b), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(r, b, size, batch, steps, str(device), threads, barrier, queue))
             for r in range(b)]
    for p in procs:
        p.start()
    times = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return max(t1 for _, t1 in times) - min(t0 for t0, _ in times)


def _arm_torchfunc(b: int, data: tuple[torch.Tensor, ...], steps: int, device: torch.device,
                   compiled: bool = False) -> float:
    """One `Fused` group of B students (vmap + functional_call); compiled: torch.compile around vmapped fwd + loss."""
    amp = device.type == "cuda"
    group = Fused(_students(b, device), LR, WD)
    loss_fn = None
    if compiled:
        def fwd_loss(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, temps: torch.Tensor,
                     alphas: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = group.forward(x)  # the vmapped forward, traced whole: compile outside vmap
            return kd_losses(logits, t, y, temps, alphas, SMOOTHING)

        loss_fn = torch.compile(fwd_loss)
    return _timed(lambda: _kd_step(group.forward, group.opt, data, amp, loss_fn), steps, device)


def _arm_hfta(b: int, data: tuple[torch.Tensor, ...], steps: int, device: torch.device) -> float:
    """The HFTA-style rewrite of B students and one AdamW over its parameters."""
    model = hfta_fuse(_students(b, device)).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    return _timed(lambda: _kd_step(model, opt, data, device.type == "cuda"), steps, device)


def _arm_sequential(b: int, data: tuple[torch.Tensor, ...], steps: int, device: torch.device,
                    compiled: bool = False) -> float:
    """B `Solo` students, each stepping on its own in turn (one timed step = B model steps)."""
    amp = device.type == "cuda"
    solos = [Solo(m, LR, WD) for m in _students(b, device)]
    fwds = [torch.compile(s.model) if compiled else s.model for s in solos]
    x, y, t, temps, alphas = data
    per = [(x, y, t, temps[i:i + 1], alphas[i:i + 1]) for i in range(b)]

    def step() -> None:
        for s, f, d in zip(solos, fwds, per):
            _kd_step(lambda v, f=f: f(v)[None], s.opt, d, amp)

    return _timed(step, steps, device)


def arm_plan(bs: list[int], device: torch.device, compile_: bool, mps: bool) -> list[tuple[str, int]]:
    """(arm, B) in the order they run. On CUDA the decisive three come first (9 fused, one student alone, 4 packed
    trials: issue 23's targets), so that a run cut short still answers them; then the rest per B."""
    plan: list[tuple[str, int]] = []
    if device.type == "cuda":
        plan += [("fused_torchfunc", max(bs)), ("sequential", 1), ("packed", 4)]
        if mps:
            plan.append(("packed_mps", 4))
    for b in bs:
        plan += [("fused_torchfunc", b), ("fused_hfta", b), ("sequential", b), ("packed", b)]
    if compile_:  # compiling costs a minute or more per arm: the largest group and one student alone
        plan += [("fused_torchfunc_compiled", max(bs)), ("solo_compiled", 1)]
    return list(dict.fromkeys(plan))  # each (arm, B) once, first position kept


def mps_available() -> bool:
    """Whether this machine has the CUDA MPS control daemon."""
    return shutil.which("nvidia-cuda-mps-control") is not None


def _packed_mps(b: int, size: int, batch: int, steps: int, device: torch.device, threads: int) -> float:
    """The packed arm with the processes as clients of a CUDA MPS server started here (user-level, own pipe
    folder) and stopped afterwards; the GPU's compute mode is left as it is."""
    pipe = tempfile.mkdtemp(prefix="kdsweep-mps-")
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": pipe}
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True, timeout=30)
    try:
        with mock.patch.dict(os.environ, env):  # the spawned workers inherit it and connect to the server
            return _packed(b, size, batch, steps, device, threads)
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env, timeout=30)
        shutil.rmtree(pipe, ignore_errors=True)


def bench_fused_students(size: int, batch: int, steps: int, bs: list[int], device: torch.device | str, threads: int,
                         compile_: bool = False, mps: bool = False) -> list[dict]:
    """Steady-state training throughput of every arm for every group size B: one dict per (arm, B)."""
    device = torch.device(device)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    compile_ = compile_ and device.type == "cuda"
    mps = mps and device.type == "cuda" and mps_available()
    if compile_:
        torch._dynamo.config.recompile_limit = max(8, 2 * max(bs))  # solo_compiled: one compile per module
    arms: dict[str, Callable[..., float]] = {
        "fused_torchfunc": lambda b, data: _arm_torchfunc(b, data, steps, device),
        "fused_hfta": lambda b, data: _arm_hfta(b, data, steps, device),
        "sequential": lambda b, data: _arm_sequential(b, data, steps, device),
        "packed": lambda b, data: _packed(b, size, batch, steps, device, threads),
        "packed_mps": lambda b, data: _packed_mps(b, size, batch, steps, device, threads),
        "fused_torchfunc_compiled": lambda b, data: _arm_torchfunc(b, data, steps, device, True),
        "solo_compiled": lambda b, data: _arm_sequential(b, data, steps, device, True),
    }
    rows = []
    for arm, b in arm_plan(bs, device, compile_, mps):
        row = {"arm": arm, "B": b, "size": size, "batch": batch, "device": str(device)}
        try:
            secs = arms[arm](b, _data(batch, size, device, b))
            row.update(images_per_s=b * batch * steps / secs, step_ms=secs / steps * 1e3)
            print(f"  {arm:26s} B={b}: {row['images_per_s']:8.1f} img/s", flush=True)
        except Exception as e:  # noqa: BLE001 - one arm's failure (compile, MPS, memory) must not cost the others
            row["error"] = f"{type(e).__name__}: {e}"[:300]
            print(f"  {arm:26s} B={b}: {row['error']}", flush=True)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: arm x B, images/s, ms per (fused or B-model) step, ratio vs sequential and vs packed at the same B."""
    ref = {(r["arm"], r["B"]): r["images_per_s"] for r in rows if "error" not in r}
    lines = ["| arm | B | images/s | step ms | vs sequential | vs packed |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: r["B"]):
        if "error" in r:
            lines.append(f"| {r['arm']} | {r['B']} | error: {r['error'][:80]} | | | |")
            continue
        ips = r["images_per_s"]
        seq, pk = (ref.get((base, r["B"])) for base in ("sequential", "packed"))
        vs_seq, vs_pk = (f"{ips / base:.2f}x" if base else "-" for base in (seq, pk))
        lines.append(f"| {r['arm']} | {r['B']} | {ips:.1f} | {r['step_ms']:.1f} | {vs_seq} | {vs_pk} |")
    return "\n".join(lines)


def decisive(rows: list[dict]) -> dict:
    """Issue 23's targets from the rows: B fused (largest B, best fused arm) vs one student alone and vs 4 packed."""
    ips = {(r["arm"], r["B"]): r["images_per_s"] for r in rows if "error" not in r}
    top = max((b for a, b in ips if a.startswith("fused")), default=None)
    if top is None:
        return {}
    arm, best = max(((a, v) for (a, b), v in ips.items() if a.startswith("fused") and b == top), key=lambda x: x[1])
    out = {"fused_arm": arm, "B": top, "fused_images_per_s": round(best, 1)}
    for name, key in (("alone", ("sequential", 1)), ("packed4", ("packed", 4)), ("packed4_mps", ("packed_mps", 4))):
        if key in ips:
            out[f"vs_{name}"] = round(best / ips[key], 2)
    return out


def machine(device: torch.device) -> dict:
    """CPU model, torch version and CPU capability, GPU name, date."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": mp.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    """CLI: run the benchmark, print the Markdown table, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--bs", default="1,3,9", help="comma-separated group sizes B")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (parent arms; packed: threads // B each)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also the torch.compile arms (CUDA only)")
    p.add_argument("--mps", action="store_true", help="also the packed arm under CUDA MPS (if the daemon exists)")
    p.add_argument("--out", help="JSON file for machine info, arguments, equivalence check and rows")
    a = p.parse_args()
    device = torch.device(a.device)
    t0 = time.perf_counter()
    diff = check_hfta()
    rows = bench_fused_students(a.size, a.batch, a.steps, [int(b) for b in a.bs.split(",")], device, a.threads,
                                a.compile, a.mps)
    print(table(rows))
    print(f"decisive: {decisive(rows)}")
    wall = time.perf_counter() - t0
    print(f"wall {wall:.0f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"machine": machine(device), "args": vars(a), "hfta_max_abs_diff": diff, "wall_s": wall,
                       "decisive": decisive(rows),
                       "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
