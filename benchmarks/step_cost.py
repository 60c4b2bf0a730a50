"""Cost of each EMA placement: momentum params, FLOPs, median step time and peak memory of one training step.

One model per placement (same seed, same random batch). A full step is the engine's:
``loss = model.training_step(batch, i)``, ``opt.zero_grad``, ``loss.backward()``, ``opt.step()``,
``model.ema.step(max_steps)``. Steps are timed interleaved (one step of each placement per round, the
starting placement rotating), so a noisy machine slows every placement alike; the ratios are the result.
Peak memory is measured in a separate process per placement (peak RSS on CPU, max_memory_allocated on GPU).

    python benchmarks/step_cost.py                    # BYOL, ResNet-18, CIFAR stem, 32x32, batch 64
    python benchmarks/step_cost.py --tiny             # smoke run (seconds)
    python benchmarks/step_cost.py --dataset custom --image_size 224 --batch_size 32 --json cost.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_PLACEMENTS = "all,backbone,block4+projector,projector,none"
HEAD_FLAGS = ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim")
# smoke mode; one thread, since on a busy machine two OpenMP threads on tiny kernels run several times slower
TINY = {"image_size": 16, "batch_size": 4, "steps": 1, "warmup": 1, "proj_hidden_dim": 64, "pred_hidden_dim": 64,
        "threads": 1}
MAX_STEPS = 1000  # the schedule length given to build_cfg and to ema.step
CHILD_STEPS = 2  # full steps per memory child: the second already holds the optimizer state


def log(msg: str) -> None:
    print(f"[step_cost] {msg}", file=sys.stderr, flush=True)


def quiet_lightning() -> None:
    """Silence Lightning's 'self.log() outside a Trainer' warnings (the step runs without a Trainer)."""
    warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
    warnings.filterwarnings("ignore", message=r".*self\.trainer.*")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="step_cost.py",
        description="Measure the step cost (params, FLOPs, time, memory) of each EMA placement.",
    )
    a = p.add_argument
    a("--method", default="byol", help="a name in solo_ema.methods.METHODS (default: byol)")
    a("--backbone", default=None, help="resnet18 or resnet50 (default: resnet18 on CPU, resnet50 on GPU)")
    a("--dataset", default=None,
      help="cifar10/cifar100/fashion_mnist: 32x32 stem; custom: ImageNet stem (default: cifar100 on CPU, "
      "custom on GPU)")
    a("--num_classes", type=int, default=None, help="classifier size (default: the dataset's, 100 for custom)")
    a("--image_size", type=int, default=None,
      help="crop size of the random batch (default 32 on CPU, 224 on GPU; 16 with --tiny)")
    a("--batch_size", type=int, default=None, help="per step (default 64; 4 with --tiny)")
    a("--placements", default=DEFAULT_PLACEMENTS,
      help=f"comma-separated --ema_parts specs (default: {DEFAULT_PLACEMENTS})")
    a("--steps", type=int, default=None, help="timed steps per placement (default 10; 1 with --tiny)")
    a("--warmup", type=int, default=None, help="untimed steps per placement (default 2; 1 with --tiny)")
    a("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default; 1 with --tiny)")
    a("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    a("--optimizer", choices=("sgd", "lars"), default=None, help="default: the method config's (sgd)")
    for name in HEAD_FLAGS:
        a(f"--{name}", type=int, default=None, help="method head size (default: the method's)")
    a("--memory", dest="memory", action="store_true", default=True,
      help="measure peak memory per placement, each in its own process (the default)")
    a("--no_memory", dest="memory", action="store_false", help="skip the memory measurement")
    a("--ema_calls", type=int, default=50,
      help="calls of ema.update timed for the EMA-update share, spread over the rounds after each `all` step "
      "(default: 50)")
    a("--seed", type=int, default=5, help="seed of the models and the batch (default: 5)")
    a("--json", default=None, metavar="PATH", help="also write the results as JSON")
    a("--tiny", action="store_true", help="smoke mode: image 16, batch 4, head hidden 64, steps 1, warmup 1, threads 1")
    a("--_memory_child", default=None, help=argparse.SUPPRESS)
    return p


def resolve_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags with the device-dependent defaults filled in."""
    import torch

    args = build_parser().parse_args(argv)
    defaults = {"image_size": 32, "batch_size": 64, "steps": 10, "warmup": 2, "backbone": "resnet18",
                "dataset": "cifar100"}
    on_gpu = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    if on_gpu and not args.tiny:  # the paper's large setting: ResNet-50 at 224 px
        defaults.update(image_size=224, backbone="resnet50", dataset="custom")
    if args.tiny:
        defaults.update(TINY)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    if not args.placements:
        raise SystemExit("step_cost.py: --placements is empty")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        raise SystemExit("step_cost.py: need --steps >= 1, --warmup >= 0, --batch_size >= 1")
    return args


# model, batch and one step ---------------------------------------------------------------------------
def cfg_argv(args: argparse.Namespace, placement: str) -> list[str]:
    argv = ["--method", args.method, "--backbone", args.backbone, "--dataset", args.dataset,
            "--ema_parts", placement, "--batch_size", str(args.batch_size), "--max_steps", str(MAX_STEPS),
            "--crop_size", str(args.image_size), "--seed", str(args.seed)]
    num_classes = args.num_classes or (100 if args.dataset == "custom" else None)
    if num_classes is not None:
        argv += ["--num_classes", str(num_classes)]
    if args.optimizer is not None:
        argv += ["--optimizer", args.optimizer]
    for name in HEAD_FLAGS:
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    if args.device == "cpu":
        argv += ["--accelerator", "cpu", "--precision", "32-true"]
    else:
        argv += ["--accelerator", "gpu", "--precision", "16-mixed"]
    return argv


def make_optimizer(model, cfg):
    """The model's own optimizer (configure_optimizers under a stub trainer); plain SGD if that fails."""
    from types import SimpleNamespace

    import torch

    stub = SimpleNamespace(estimated_stepping_batches=MAX_STEPS, max_epochs=-1)
    try:
        model._trainer = stub
        out = model.configure_optimizers()
        opt = out[0][0] if isinstance(out, tuple | list) and isinstance(out[0], list) else out
        if isinstance(opt, dict):
            opt = opt["optimizer"]
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"unexpected configure_optimizers output {type(out)}")
        return opt, f"{type(opt).__name__} (configure_optimizers)"
    except Exception as exc:  # any failure falls back to the documented default
        log(f"configure_optimizers failed ({exc}); using SGD(lr=0.01, momentum=0.9)")
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), "SGD(lr=0.01, momentum=0.9)"
    finally:
        model._trainer = None


class Runner:
    """One placement: model, optimizer, grad scaler (GPU) and the full training step."""

    def __init__(self, args: argparse.Namespace, placement: str) -> None:
        import torch

        from solo_ema.pretrain import build_cfg, build_model

        self.placement = placement
        self.device = torch.device(args.device)
        self.cfg = build_cfg(cfg_argv(args, placement))
        torch.manual_seed(args.seed)
        model = build_model(self.cfg)
        cuda = self.device.type == "cuda"
        model = model.to(self.device)
        if cuda and not self.cfg.performance.disable_channel_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.model = model
        self.opt, self.opt_name = make_optimizer(model, self.cfg)
        self.ema = getattr(model, "ema", None)
        self.scaler = torch.amp.GradScaler("cuda") if cuda else None
        self.step_idx = 0

    @property
    def momentum_params(self) -> int:
        return self.ema.num_momentum_params() if self.ema is not None else 0

    def _autocast(self):
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def loss(self, batch) -> Any:
        with self._autocast():
            out = self.model.training_step(batch, self.step_idx)
        self.step_idx += 1
        return out["loss"] if isinstance(out, dict) else out

    def step(self, batch) -> None:
        loss = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        if self.ema is not None:
            self.ema.step(MAX_STEPS)

    def forward_backward(self, batch) -> None:
        loss = self.loss(batch)
        loss.backward()
        self.opt.zero_grad(set_to_none=True)


def make_batch(args: argparse.Namespace, num_classes: int, device) -> list[Any]:
    import torch

    g = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x1, x2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    targets = torch.randint(0, max(1, num_classes), (args.batch_size,), generator=g)
    indexes = torch.arange(args.batch_size)
    return [indexes.to(device), [x1.to(device), x2.to(device)], targets.to(device)]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_gflops(runner: Runner, batch) -> float:
    """FLOPs of one forward + backward (matmuls and convolutions, as FlopCounterMode counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        runner.forward_backward(batch)
    return counter.get_total_flops() / 1e9


def time_ema_update(runner: Runner, calls: int) -> list[float]:
    """Seconds of each of `calls` calls of ema.update(0.99) (the EMA update alone, no schedule)."""
    times = []
    for _ in range(calls):
        sync(runner.device)
        t0 = time.perf_counter()
        runner.ema.update(0.99)
        sync(runner.device)
        times.append(time.perf_counter() - t0)
    return times


# memory (one process per placement) ------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB: VmHWM where /proc has it, else getrusage's ru_maxrss.

    On Linux ru_maxrss survives fork + exec, so a child started by a big parent reports at least the
    parent's RSS at the fork; VmHWM is the high-water mark of the child's own address space.
    """
    import resource

    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(args: argparse.Namespace) -> None:
    """Build one placement, run CHILD_STEPS full steps, print its peak memory as one JSON line on stdout."""
    import resource

    import torch

    before = peak_rss_mib()
    runner = Runner(args, args._memory_child)
    batch = make_batch(args, int(runner.cfg.data.num_classes), runner.device)
    cuda = runner.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(runner.device)
    for _ in range(CHILD_STEPS):
        runner.step(batch)
    sync(runner.device)
    result = {"placement": args._memory_child, "rss_before_model_mib": before, "peak_rss_mib": peak_rss_mib(),
              "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(runner.device) / 2**20
    print(json.dumps(result), flush=True)


def child_argv(args: argparse.Namespace, placement: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--_memory_child", placement,
            "--method", args.method, "--backbone", args.backbone, "--dataset", args.dataset,
            "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
            "--warmup", str(args.warmup), "--device", args.device, "--seed", str(args.seed)]
    for name in ("num_classes", "threads", "optimizer", *HEAD_FLAGS):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    if args.threads is None and args.device == "cpu":
        # The children run side by side with each other and this process's warm-up: one thread each
        # avoids oversubscribing the cores (peak RSS moves by <1% between 1 and 2 threads).
        argv += ["--threads", "1"]
    return argv


def run_memory_child(args: argparse.Namespace, placement: str) -> dict[str, Any] | None:
    proc = subprocess.run(child_argv(args, placement), capture_output=True, text=True, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"memory child for {placement} failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return None
    return json.loads(lines[-1])


def start_memory(args: argparse.Namespace) -> tuple[ThreadPoolExecutor, dict[str, Any]]:
    """Start the memory children in the background; each is its own process, so its peak is its own.

    They run while this process builds, counts and warms up its models (nothing is timed then); the
    timed loop waits for them. On CPU up to one child per core runs at a time, on GPU one.
    """
    workers = 1 if args.device == "cuda" else max(1, min(len(args.placements), os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    return pool, {p: pool.submit(run_memory_child, args, p) for p in args.placements}


# report ----------------------------------------------------------------------------------------------
def fmt_ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.3f}" if num is not None and den else "n/a"


def render(settings: dict[str, Any], rows: list[dict[str, Any]], ema_share: dict[str, Any] | None) -> str:
    by = {r["placement"]: r for r in rows}
    all_row, none_row = by.get("all"), by.get("none")
    mem_key = "peak_cuda_mib" if settings["device"] == "cuda" else "peak_rss_mib"
    mem_name = "peak CUDA memory MiB" if settings["device"] == "cuda" else "peak RSS MiB"
    lines = [
        "# EMA placement step cost",
        "",
        f"method {settings['method']} | backbone {settings['backbone']} ({settings['stem']} stem) | "
        f"image {settings['image_size']}x{settings['image_size']} | batch {settings['batch_size']} | "
        f"device {settings['device']} | torch threads {settings['threads']} | torch {settings['torch']}",
        f"optimizer {settings['optimizer']} | heads {settings['heads']} | steps {settings['steps']} "
        f"(warmup {settings['warmup']}), interleaved | precision {settings['precision']}",
        "",
        f"| placement | momentum params | GFLOP/step | FLOP ratio vs all | median step s | ratio vs all | "
        f"ratio vs none | {mem_name} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = r.get("memory") or {}
        mem_s = f"{mem[mem_key]:.0f}" if mem_key in mem else ("skipped" if not settings["memory"] else "n/a")
        lines.append(
            f"| {r['placement']} | {r['momentum_params']:,} | {r['gflops']:.2f} | "
            f"{fmt_ratio(r['gflops'], all_row and all_row['gflops'])} | {r['median_s']:.4f} | "
            f"{fmt_ratio(r['median_s'], all_row and all_row['median_s'])} | "
            f"{fmt_ratio(r['median_s'], none_row and none_row['median_s'])} | {mem_s} |"
        )
    lines.append("")
    if ema_share is not None:
        lines.append(
            f"EMA update alone (all, ema.update(0.99), median of {ema_share['calls']} calls timed within the rounds): "
            f"{ema_share['median_s'] * 1e3:.2f} ms = {ema_share['percent_of_step']:.2f}% of the `all` median step"
        )
    else:
        lines.append("EMA update share: n/a (no `all` placement)")
    befores = [r["memory"]["rss_before_model_mib"] for r in rows if r.get("memory")]
    if settings["device"] == "cpu" and befores:
        lines.append(f"(peak RSS: VmHWM of a separate process per placement after {CHILD_STEPS} full steps, "
                     f"{settings['memory_threads']} thread(s); it includes the "
                     f"{statistics.median(befores):.0f} MiB the process held after imports, before the model)")
    elif befores:
        lines.append(f"(peak CUDA memory: max_memory_allocated of a separate process per placement after "
                     f"{CHILD_STEPS} full steps)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = resolve_args(argv)
    quiet_lightning()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._memory_child is not None:
        memory_child(args)
        return 0

    t_start = time.perf_counter()
    memory: dict[str, dict[str, Any] | None] = {}
    if args.memory:
        log("measuring peak memory in the background (one process per placement)")
        pool, futures = start_memory(args)
    runners: dict[str, Runner] = {}
    for placement in args.placements:
        log(f"building {placement}")
        runners[placement] = Runner(args, placement)
    first = runners[args.placements[0]]
    batch = make_batch(args, int(first.cfg.data.num_classes), first.device)

    log(f"models built at {time.perf_counter() - t_start:.1f} s")
    gflops: dict[str, float] = {}
    for placement, runner in runners.items():
        log(f"counting FLOPs and warming up {placement}")
        gflops[placement] = count_gflops(runner, batch)
        for _ in range(args.warmup):
            runner.step(batch)
        sync(runner.device)

    if args.memory:  # no timing while the memory children run
        log("waiting for the memory children")
        memory = {p: f.result() for p, f in futures.items()}
        pool.shutdown()
        log(f"memory done at {time.perf_counter() - t_start:.1f} s")

    # The EMA update alone is timed inside the same rounds, right after the `all` step, so that its share
    # of the step compares two timings taken under the same load.
    ema_runner = runners["all"] if "all" in runners and runners["all"].ema is not None else None
    ema_per_round = -(-args.ema_calls // args.steps)
    ema_times: list[float] = []
    times: dict[str, list[float]] = {p: [] for p in args.placements}
    n = len(args.placements)
    for step in range(args.steps):
        order = args.placements[step % n:] + args.placements[: step % n]
        for placement in order:
            runner = runners[placement]
            sync(runner.device)
            t0 = time.perf_counter()
            runner.step(batch)
            sync(runner.device)
            times[placement].append(time.perf_counter() - t0)
            if runner is ema_runner:
                ema_times += time_ema_update(runner, ema_per_round)
        log(f"round {step + 1}/{args.steps}: " + ", ".join(f"{p} {times[p][-1]:.3f}s" for p in args.placements))

    log(f"timed steps done at {time.perf_counter() - t_start:.1f} s")
    medians = {p: statistics.median(t) for p, t in times.items()}
    ema_share = None
    if ema_times:
        update_s = statistics.median(ema_times)
        ema_share = {"calls": len(ema_times), "median_s": update_s, "percent_of_step": 100 * update_s / medians["all"]}

    from solo_ema.data.catalog import DATASETS

    k = first.cfg.method_kwargs
    settings = {
        "method": args.method, "backbone": args.backbone, "dataset": args.dataset,
        "stem": "CIFAR 32x32" if DATASETS[args.dataset].small_images else "ImageNet 224",
        "image_size": args.image_size, "batch_size": args.batch_size, "device": args.device,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "optimizer": first.opt_name,
        "heads": ", ".join(f"{name} {k[name]}" for name in HEAD_FLAGS if name in k),
        "steps": args.steps, "warmup": args.warmup, "memory": args.memory,
        "memory_threads": args.threads or (1 if args.device == "cpu" else torch.get_num_threads()),
        "precision": "16-mixed + channels_last" if args.device == "cuda" else "32-true",
    }
    rows = [{"placement": p, "momentum_params": runners[p].momentum_params, "gflops": gflops[p],
             "median_s": medians[p], "times_s": times[p]} for p in args.placements]
    for r in rows:
        r["memory"] = memory.get(r["placement"])

    print(render(settings, rows, ema_share), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows, "ema_update": ema_share},
                                              indent=2))
    log(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
