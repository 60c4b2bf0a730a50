"""Epoch time of real training runs: the fast path, the eager path and solo-learn's own BYOL, side by side.

Every row is one real run, each through its own training loop, in its own process, on the same data
(Fashion-MNIST padded to 32x32 by default, the CIFAR recipe of each method: ResNet-18 with the CIFAR stem,
batch 256, two 32x32 views, LARS):

- ``fast``: ``solo-ema-pretrain`` as a GPU user gets it (``--device_data``, batches made one ahead on a side
  stream, no host reads between metric writes, cudnn.benchmark) plus ``--compile``;
- ``eager``: the same run without those (``--device_data --no_prefetch --log_every_n_steps 1``, no compile):
  the same batches and the same step;
- ``solo-learn``: solo-learn's own ``main_pretrain.py`` (its BYOL, its CIFAR YAML) on the same images written as
  CIFAR-10's file layout (so that it takes its CIFAR path), with its torchvision loader in worker processes.

Per row: seconds per training epoch (the median over the epochs after the first, which holds compilation and
cudnn's autotuning; validation excluded), the validation seconds per epoch (with ``--knn``: the paper-era kNN),
the median step, the step split (wait for the batch, forward, backward, optimizer, EMA, hooks and logging, each
the median over the second epoch's steps, timed with CUDA events on the training stream on a GPU), host
synchronisations per step (counted with torch.cuda's sync debug mode over a window of steps), achieved TFLOP/s
(the FLOPs of one step, counted with torch.utils.flop_counter on the run's model, times the steps of an epoch,
over the epoch's seconds), peak memory, and the time of the first epoch (start-up and compilation). The rows are
written as CSV (``benchmarks/results/epoch_time_<gpu>.csv`` by default) and printed as a table with the ratios
projector / all and fast / eager.

    python benchmarks/epoch_time.py                                  # GPU: byol, 4 placements, 3 loops
    python benchmarks/epoch_time.py --methods byol dino mocov2plus ressl simclr simsiam --loops fast
    python benchmarks/epoch_time.py --tiny                           # smoke run on the CPU (a minute)
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

LOOPS = ("fast", "eager", "solo-learn")
PLACEMENTS = ("all", "projector", "none", "block4+projector")
METHODS = ("byol", "dino", "mocov2plus", "ressl", "simclr", "simsiam")
COLUMNS = ("loop", "method", "ema_parts", "batch_size", "images_per_epoch", "epoch_seconds", "step_ms", "tflops",
           "peak_mem_gib", "hardware", "commit", "command", "first_epoch_seconds", "val_seconds", "data_ms",
           "forward_ms", "backward_ms", "optimizer_ms", "ema_ms", "other_ms", "syncs_per_step", "precision",
           "compile")
SPLIT = ("data", "forward", "backward", "optimizer", "ema", "other")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TINY = {"subset": 16, "batch_size": 8, "epochs": 2, "heads": 64, "workers": 0, "compile_backend": "aot_eager"}


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(prog="epoch_time.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--methods", nargs="+", default=["byol"], choices=METHODS, help="methods (default: byol)")
    a("--placements", nargs="+", default=list(PLACEMENTS), help=f"--ema_parts specs (default: {' '.join(PLACEMENTS)})")
    a("--loops", nargs="+", default=list(LOOPS), choices=LOOPS, help="loops (default: all three)")
    a("--data_dir", default=FASHION_MNIST, help=f"Fashion-MNIST folder (default {FASHION_MNIST})")
    a("--subset", type=int, default=None, help="train on this many images (default: all 60,000)")
    a("--batch_size", type=int, default=None, help="per step (default 256; 8 with --tiny)")
    a("--epochs", type=int, default=None, help="epochs per run, the first not counted (default 3; 2 with --tiny)")
    a("--workers", type=int, default=None, help="solo-learn's loader workers (default 8; 0 with --tiny)")
    a("--precision", default=None, help="default 16-mixed on GPU (the paper's), 32-true on CPU")
    a("--compile_backend", default=None,
      help="the fast loop's torch.compile backend (default inductor; aot_eager with --tiny)")
    a("--no_compile", action="store_true", help="the fast loop without --compile")
    a("--knn", action="store_true", help="validate every epoch with the paper-era kNN and time it")
    a("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    a("--out", default=None, help="CSV path (default benchmarks/results/epoch_time_<gpu>.csv)")
    a("--work_dir", default=None, help="runs and the image folder of the solo-learn loop (default: a temp folder)")
    a("--tiny", action="store_true", help="smoke mode: 16 images, batch 8, heads 64, 2 epochs, aot_eager, CPU")
    a("--_child", default=None, help=argparse.SUPPRESS)
    return p


def resolve(argv: list[str] | None) -> argparse.Namespace:
    """Flags with the device-dependent defaults filled in."""

    args = build_parser().parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    defaults = {"batch_size": 256, "epochs": 3, "workers": 8, "heads": None, "compile_backend": "inductor"}
    if args.tiny:
        defaults.update(TINY)
        args.subset = args.subset or TINY["subset"]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.precision = args.precision or ("16-mixed" if args.device == "cuda" else "32-true")
    if args.epochs < 2:
        raise SystemExit("epoch_time.py: --epochs must be >= 2 (the first epoch is not counted)")
    return args


def hardware(device: str) -> str:
    """The GPU's name and count, or the CPU's."""

    if device == "cuda":
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"


def commit() -> str:
    """The checkout's commit (with -dirty when it has changes), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# what each loop runs ---------------------------------------------------------------------------------------------
def recipe_argv(method: str) -> list[str]:
    """The flags of bash_files/pretrain/cifar/<method>.sh (run with PYTHON=echo)."""
    script = ROOT / "bash_files" / "pretrain" / "cifar" / f"{method}.sh"
    out = subprocess.run(["bash", str(script), "cifar10"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHON": "echo"}).stdout.split()
    return out[2:]  # after "-m solo_ema.pretrain"


def engine_argv(args: argparse.Namespace, loop: str, method: str, parts: str, log_dir: str) -> list[str]:
    """solo-ema-pretrain flags of one fast or eager run."""
    argv = [*recipe_argv(method), "--dataset", "fashion_mnist", "--data_dir", args.data_dir, "--device_data",
            "--max_epochs", str(args.epochs), "--batch_size", str(args.batch_size), "--precision", args.precision,
            "--accelerator", "gpu" if args.device == "cuda" else "cpu", "--log_dir", log_dir,
            "--name", f"{loop}-{method}-{parts.replace('+', '_')}", "--seed", "5"]
    argv += ["--ema_parts", parts] + (["--base_tau_momentum", "0", "--final_tau_momentum", "0"] if parts == "none"
                                      else [])
    if args.subset:
        argv += ["--train_subset", str(args.subset)]
    if args.heads:
        argv += ["--proj_hidden_dim", str(args.heads), "--pred_hidden_dim", str(args.heads)]
    argv += ["--knn_metric", "paper", "--knn_k", "20"] if args.knn else ["--limit_val_batches", "0"]
    if loop == "fast":
        argv += [] if args.no_compile else ["--compile", "--compile_backend", args.compile_backend]
    else:
        argv += ["--no_prefetch", "--log_every_n_steps", "1"]
    return argv


def write_cifar_layout(args: argparse.Namespace, root: Path) -> Path:
    """Fashion-MNIST's training images (the engine runs' subset, padded to 32x32, grey in three channels) in
    CIFAR-10's on-disk layout (``cifar-10-batches-py``), so that solo-learn trains on them through its CIFAR
    path: torchvision's CIFAR10 reader and the CIFAR stem, as for its own CIFAR recipes."""
    import pickle

    import numpy as np

    from solo_ema.data.device import load_split

    folder = root / "cifar-10-batches-py"
    if (folder / "batches.meta").exists():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = load_split("fashion_mnist", args.data_dir, True, subset=args.subset, seed=5)
    rgb = images.expand(-1, 3, -1, -1).reshape(len(images), -1).numpy()  # CIFAR rows: R plane, G plane, B plane
    parts = np.array_split(np.arange(len(images)), 5)
    for i, idx in enumerate(parts, start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": np.ascontiguousarray(rgb[idx]), "labels": labels[idx].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.ascontiguousarray(rgb[:1]), "labels": labels[:1].tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(c) for c in range(10)]}, f)
    return root


def trust_cifar_layout() -> None:
    """Let torchvision's CIFAR10 read the files above (their checksums are not CIFAR-10's)."""
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda *a, **k: True
    cifar.CIFAR10._check_integrity = lambda self: True


def solo_learn_argv(args: argparse.Namespace, parts: str, folder: Path, log_dir: str) -> list[str]:
    """solo-learn's main_pretrain arguments: its CIFAR BYOL YAML on the CIFAR-layout folder, one GPU, no checkpoints."""
    from solo_ema.solo.pretrain import find_solo_root

    configs = find_solo_root(env=os.environ.get("SOLO_LEARN_ROOT")) / "scripts" / "pretrain" / "cifar"
    argv = ["--config-path", str(configs), "--config-name", "byol.yaml", "hydra/job_logging=none",
            "hydra/hydra_logging=none", "++data.dataset=cifar10", f"++data.train_path={folder}",
            f"++data.val_path={folder}", "++data.format=image_folder", f"++data.num_workers={args.workers}",
            f"++optimizer.batch_size={args.batch_size}", f"++max_epochs={args.epochs}", f"++precision={args.precision}",
            "++strategy=auto", "++sync_batchnorm=False", "++checkpoint.enabled=False", "++auto_resume.enabled=False",
            "++wandb.enabled=False", f"++name=solo-learn-byol-{parts}",
            "++limit_val_batches=0"]  # its validation is a classifier pass only: not timed here
    if args.device == "cuda":
        argv += ["++accelerator=gpu", "++devices=[0]"]
    else:
        argv += ["++accelerator=cpu", '++devices="1"']
    if args.heads:
        argv += [f"++method_kwargs.proj_hidden_dim={args.heads}", f"++method_kwargs.pred_hidden_dim={args.heads}"]
    return argv


# measurement -----------------------------------------------------------------------------------------------------
class EpochProfile(pl.Callback):
    """A Lightning callback: epoch and validation times, the step split of the second epoch, host syncs.

    On a GPU the split comes from CUDA events recorded on the training stream at the loop's hooks (the wait for
    the batch: previous batch end to this batch's start; forward: to on_before_backward; backward: to
    on_after_backward; optimizer: to the EMA update; EMA: the update itself; other: to the batch end, then
    Lightning's logging, which is counted in the next wait). On the CPU the same points are read from the clock.
    """

    def __init__(self, cuda: bool, sync_window: tuple[int, int] = (5, 15)) -> None:
        self.cuda = cuda
        self.epoch_times: list[float] = []
        self.val_times: list[float] = []
        self.steps: list[dict[str, Any]] = []  # the second epoch's marks per step
        self.sync_window = sync_window
        self.syncs = 0
        self.sync_steps = 0
        self._epoch = -1
        self._marks: dict[str, Any] = {}
        self._last_end: Any = None
        self._val_start = 0.0

    def _mark(self) -> Any:

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _ms(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000.0

    def _sync(self) -> None:

        if self.cuda:
            torch.cuda.synchronize()

    def setup(self, trainer, pl_module, stage: str) -> None:
        ema = getattr(pl_module, "ema", None)
        if ema is not None:  # the EMA update inside optimizer_step gets its own marks
            step = ema.step

            def marked(*a: Any, **k: Any) -> Any:
                self._put("ema_start")
                out = step(*a, **k)
                self._put("ema_end")
                return out

            ema.step = marked

    def _put(self, key: str) -> None:
        if self._epoch == 1:
            self._marks[key] = self._mark()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync()
        self._epoch += 1
        self._epoch_start = time.perf_counter()
        self._last_end = None

    def on_train_batch_start(self, trainer, pl_module, batch, idx: int) -> None:

        if self._epoch == 1:
            self._marks = {"start": self._mark(), "prev_end": self._last_end}
            if self.cuda and idx == self.sync_window[0]:
                torch.cuda.set_sync_debug_mode("warn")
                import warnings

                self._catcher = warnings.catch_warnings(record=True)
                self._warned = self._catcher.__enter__()
                warnings.simplefilter("always")
            if self.cuda and idx == self.sync_window[1]:
                self._stop_counting(idx)

    def _stop_counting(self, idx: int) -> None:

        if getattr(self, "_catcher", None) is None:
            return
        torch.cuda.set_sync_debug_mode(0)
        self._catcher.__exit__(None, None, None)
        self.syncs = sum("synchroniz" in str(w.message) for w in self._warned)
        self.sync_steps = idx - self.sync_window[0]
        self._catcher = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._put("forward_end")

    def on_after_backward(self, trainer, pl_module) -> None:
        self._put("backward_end")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx: int) -> None:
        if self._epoch == 1:
            self._marks["end"] = self._mark()
            self.steps.append(self._marks)
            self._last_end = self._marks["end"]

    def on_validation_start(self, trainer, pl_module) -> None:
        self._sync()
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._sync()
        self.val_times.append(time.perf_counter() - self._val_start)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync()
        self._stop_counting(self.sync_window[1])
        self.epoch_times.append(time.perf_counter() - self._epoch_start)

    def split(self) -> dict[str, float]:
        """Median milliseconds of each part of a step over the second epoch."""
        parts: dict[str, list[float]] = {k: [] for k in SPLIT}
        parts["step"] = []
        for m in self.steps:
            if m.get("prev_end") is not None:
                parts["data"].append(self._ms(m["prev_end"], m["start"]))
            optimizer_end = m.get("ema_start", m["end"])
            parts["forward"].append(self._ms(m["start"], m["forward_end"]))
            parts["backward"].append(self._ms(m["forward_end"], m["backward_end"]))
            parts["optimizer"].append(self._ms(m["backward_end"], optimizer_end))
            parts["ema"].append(self._ms(m["ema_start"], m["ema_end"]) if "ema_start" in m else 0.0)
            parts["other"].append(self._ms(m.get("ema_end", optimizer_end), m["end"]))
            parts["step"].append(self._ms(m["prev_end"] if m.get("prev_end") is not None else m["start"], m["end"]))
        return {k: statistics.median(v) if v else float("nan") for k, v in parts.items()}


def step_flops(model: pl.LightningModule, crop_sizes: list[int], batch_size: int) -> float:
    """FLOPs of one training step of `model` (every crop's forward and backward, the target pass), counted by
    torch.utils.flop_counter on random crops; the model's weights are left as they were."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    crops = [torch.randn(batch_size, 3, size, size, device=device) for size in crop_sizes]
    batch = [torch.arange(batch_size, device=device), crops, torch.zeros(batch_size, dtype=torch.long, device=device)]
    counter = FlopCounterMode(display=False)
    with counter:
        out = model.training_step(batch, 0)
        (out["loss"] if isinstance(out, dict) else out).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_mem_gib(cuda: bool) -> float:
    """Peak allocated GPU memory, or the process's peak RSS, in GiB."""

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One run in this process: its row."""

    args = argparse.Namespace(**spec["args"])
    loop, method, parts = spec["loop"], spec["method"], spec["parts"]
    cuda = args.device == "cuda"
    profile = EpochProfile(cuda)
    if loop == "solo-learn":
        from solo_ema.solo.pretrain import find_solo_root, run

        trust_cifar_layout()
        init = pl.Trainer.__init__

        @functools.wraps(init)  # solo-learn passes only the keywords in Trainer.__init__'s signature
        def with_profile(trainer, *a: Any, **k: Any) -> None:
            k["callbacks"] = [*(k.get("callbacks") or []), profile]
            init(trainer, *a, **k)

        pl.Trainer.__init__ = with_profile
        fit = pl.Trainer.fit
        seen: dict[str, Any] = {}

        def recording_fit(trainer, model, *a: Any, **k: Any) -> Any:
            seen["trainer"], seen["model"] = trainer, model
            return fit(trainer, model, *a, **k)

        pl.Trainer.fit = recording_fit
        argv = spec["argv"]
        cwd = os.getcwd()
        os.chdir(spec["log_dir"])
        try:
            run(argv, find_solo_root(env=os.environ.get("SOLO_LEARN_ROOT")))
        finally:
            os.chdir(cwd)
        trainer = seen["trainer"]
        peak = peak_mem_gib(cuda)
        sizes = [int(a.crop_size) for a in seen["model"].cfg.augmentations for _ in range(int(a.num_crops))]
        seen["model"]._trainer = None  # its training_step logs; outside a fit loop that only warns when detached
        flops = step_flops(seen["model"], sizes, args.batch_size)
        images = trainer.num_training_batches * args.batch_size
        compiled = False
    else:
        from solo_ema.methods import build_model
        from solo_ema.pretrain import build_cfg
        from solo_ema.train import run_pretrain

        cfg = build_cfg(spec["argv"])
        cfg.checkpoint.enabled = False
        result = run_pretrain(cfg, extra_callbacks=[profile])
        trainer = result.trainer
        peak = peak_mem_gib(cuda)
        sizes = [int(a["crop_size"]) for a in cfg.augmentations for _ in range(int(a["num_crops"]))]
        del result
        torch.manual_seed(0)  # counted on an eager build of the same model (compiled kernels are not counted)
        flops = step_flops(build_model(cfg).to("cuda" if cuda else "cpu").train(), sizes, args.batch_size)
        images = trainer.num_training_batches * args.batch_size
        compiled = bool(cfg.performance.compile)
    steps = trainer.num_training_batches
    val = profile.val_times
    train_epochs = [t - (val[i] if i < len(val) else 0.0) for i, t in enumerate(profile.epoch_times)]
    epoch = statistics.median(train_epochs[1:])
    split = profile.split()
    row = {
        "loop": loop, "method": method, "ema_parts": parts, "batch_size": args.batch_size,
        "images_per_epoch": images, "epoch_seconds": round(epoch, 4), "step_ms": round(split["step"], 3),
        "tflops": round(flops * steps / epoch / 1e12, 2) if flops == flops else "",
        "peak_mem_gib": round(peak, 3), "first_epoch_seconds": round(train_epochs[0], 3),
        "val_seconds": round(statistics.median(val[1:]), 4) if len(val) > 1 else "",
        "syncs_per_step": round(profile.syncs / profile.sync_steps, 2) if profile.sync_steps else "",
        "precision": args.precision, "compile": compiled,
    }
    row.update({f"{k}_ms": round(split[k], 3) for k in SPLIT})
    return row


# the parent ------------------------------------------------------------------------------------------------------
def child(args: argparse.Namespace, loop: str, method: str, parts: str, work: Path, folder: Path | None) -> dict:
    """Run one (loop, method, placement) in a fresh process; its row, or a row that says why it failed."""
    log_dir = work / "runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if loop == "solo-learn":
        argv = solo_learn_argv(args, parts, folder, str(log_dir))
        command = "solo-ema-solo-pretrain " + " ".join(shlex.quote(a) for a in argv)
    else:
        argv = engine_argv(args, loop, method, parts, str(log_dir))
        command = "solo-ema-pretrain " + " ".join(shlex.quote(a) for a in argv)
    spec = {"args": vars(args), "loop": loop, "method": method, "parts": parts, "argv": argv, "log_dir": str(log_dir)}
    spec_file = work / f"spec-{loop}-{method}-{parts}.json"
    spec_file.write_text(json.dumps(spec))
    print(f"[epoch_time] {loop} {method} {parts}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, __file__, "--_child", str(spec_file)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"[epoch_time] {loop} {method} {parts} failed: {tail[0]}", file=sys.stderr, flush=True)
        return {"loop": loop, "method": method, "ema_parts": parts, "command": command, "error": tail[0]}
    return {**json.loads(lines[-1][4:]), "command": command}


def ratio(a: Any, b: Any) -> str:
    try:
        return f"{float(a) / float(b):.3f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, with projector / all and fast / eager of the epoch time."""
    by = {(r["loop"], r["method"], r["ema_parts"]): r for r in rows}
    head = ("| loop | method | EMA parts | s/epoch | / all | / eager | step ms | data | fwd | bwd | opt | EMA | other "
            "| syncs/step | TFLOP/s | peak GiB | val s | 1st epoch s |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['loop']} | {r['method']} | {r['ema_parts']} | failed: {r['error'][:80]} |")
            continue
        base = by.get((r["loop"], r["method"], "all"), {})
        eager = by.get(("eager", r["method"], r["ema_parts"]), {})
        out.append(
            f"| {r['loop']} | {r['method']} | {r['ema_parts']} | {r['epoch_seconds']:.3f} | "
            f"{ratio(r['epoch_seconds'], base.get('epoch_seconds'))} | "
            f"{ratio(r['epoch_seconds'], eager.get('epoch_seconds'))} | {r['step_ms']:.2f} | "
            + " | ".join(f"{r[f'{k}_ms']:.2f}" for k in SPLIT)
            + f" | {r['syncs_per_step']} | {r['tflops']} | {r['peak_mem_gib']:.2f} | {r['val_seconds']} | "
            f"{r['first_epoch_seconds']:.1f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run every (loop, method, placement), write the CSV, print the table."""
    raw = build_parser().parse_args(argv)
    if raw._child:
        row = run_child(json.loads(Path(raw._child).read_text()))
        print("ROW " + json.dumps(row), flush=True)
        return 0
    args = resolve(argv)
    gpu = hardware(args.device)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "epoch_time_" + gpu.split(" x ")[-1].replace(" ", "_").replace("NVIDIA_", "").lower() + ".csv")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="epoch_time-"))
    folder = write_cifar_layout(args, work / "fashion_mnist_cifar") if "solo-learn" in args.loops else None
    rows, head, started = [], commit(), time.time()
    for method in args.methods:
        for parts in args.placements:
            for loop in args.loops:
                if loop == "solo-learn" and (method != "byol" or parts != "all"):
                    continue  # solo-learn's own BYOL is the classic teacher
                row = child(args, loop, method, parts, work, folder)
                rows.append({**row, "hardware": gpu, "commit": head})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{gpu}, {args.precision}, batch {args.batch_size}, commit {head}, {time.time() - started:.0f} s; "
          f"rows in {out}")
    print(render(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
