"""Overhead of the gradient-norm monitor (--grad_monitor): full training steps with the monitor off, idle and on.

One model (BYOL, ResNet-18 with the CIFAR stem, 32x32, batch 32, two views by default); a full step is
``training_step``, ``zero_grad``, ``backward``, ``optimizer.step``, ``ema.step``. Three variants, timed
interleaved (one step of each per round, the starting variant rotating), on the same batch:

  off    no hook installed (the monitor is not created)
  idle   hooks installed, step not monitored (--grad_monitor_interval > 1, between logged steps)
  on     monitored step: tensor hooks record max |dL/d output| of conv1, block1..4, projector, then one
         device sync reads the six values (what GradNormMonitor does on a logged step)

Prints the median step time of each and the ratios idle/off and on/off.

    python benchmarks/monitor_overhead.py                  # 8 timed steps per variant (+2 warm-up rounds)
    python benchmarks/monitor_overhead.py --tiny           # smoke run (16x16, batch 4, small heads)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from solo_ema.analysis.grad_monitor import GradNormHooks  # noqa: E402
from solo_ema.pretrain import build_cfg, build_model  # noqa: E402

VARIANTS = ("off", "idle", "on")
MAX_STEPS = 1000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor_overhead.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", default="byol")
    p.add_argument("--ema_parts", default="projector")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--tiny", action="store_true", help="smoke mode: 16x16, batch 4, heads 64, 1 step, 0 warm-up")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.tiny:
        args.image_size, args.batch_size, args.steps, args.warmup = 16, 4, 1, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    flags = ["--method", args.method, "--dataset", "cifar100", "--ema_parts", args.ema_parts,
             "--batch_size", str(args.batch_size), "--crop_size", str(args.image_size), "--max_steps", str(MAX_STEPS)]
    if args.tiny:
        flags += ["--proj_hidden_dim", "64", "--pred_hidden_dim", "64", "--proj_output_dim", "32"]
    cfg = build_cfg(flags)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    groups = [{**g, "params": list(g["params"])} for g in model.learnable_params]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
             for _ in range(model.num_crops)]
    batch = [torch.arange(args.batch_size, device=device), views,
             torch.randint(0, int(cfg.data.num_classes), (args.batch_size,), generator=gen).to(device)]
    hooks = GradNormHooks(num_large_crops=model.num_large_crops)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step(variant: str, i: int) -> float:
        if variant == "off":
            hooks.detach()
        elif not hooks._handles:
            hooks.attach(model)
        sync()
        start = time.perf_counter()
        if variant == "on":
            hooks.arm()
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            loss = model.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        model.ema.step(MAX_STEPS)
        if variant == "on":
            hooks.disarm()
            values = hooks.read()  # the monitor's one device sync per logged step
            assert len(values) == 6, values
        sync()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    i = 0
    for r in range(args.warmup + args.steps):
        order = VARIANTS[r % 3:] + VARIANTS[: r % 3]
        for variant in order:
            t = step(variant, i)
            i += 1
            if r >= args.warmup:
                times[variant].append(t)
    hooks.detach()
    med = {v: statistics.median(ts) for v, ts in times.items()}
    print(f"device: {device} ({torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'}), "
          f"{args.method} {args.ema_parts}, ResNet-18 {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"{model.num_crops} views, {args.steps} timed steps per variant, interleaved")
    for v in VARIANTS:
        ts = times[v]
        print(f"  {v:<5} median {med[v] * 1000:9.1f} ms   min {min(ts) * 1000:9.1f} ms   max {max(ts) * 1000:9.1f} ms")
    print(f"ratio idle/off = {med['idle'] / med['off']:.3f}")
    print(f"ratio on/off   = {med['on'] / med['off']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
