"""Analysis tools: gradient-norm monitor, weight recorder, cost accounting and the solo-ema-plot CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.image as mpimg
import pytest
import torch
from PIL import Image
from torch import nn

from solo_ema.analysis.callbacks import analysis_callbacks
from solo_ema.analysis.cost import cost_of_model
from solo_ema.analysis.grad_monitor import GradNormHooks, GradNormMonitor
from solo_ema.analysis.keys import MONITORED_PARTS
from solo_ema.analysis.weights import TrackWeightsError, WeightRecorder, WeightTracker
from solo_ema.ema import get_module
from solo_ema.methods import build_model
from solo_ema.plot import main as plot_main
from solo_ema.pretrain import UsageError
from solo_ema.pretrain import main as pretrain_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet():
    """Silence Lightning's warnings about self.log() outside a Trainer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _independent_grad_norms(model: nn.Module, batch: list, num_large: int) -> tuple[dict[str, float], dict[str, int]]:
    """max over large crops of max |dL/d out| by torch.autograd.grad, with separate capture hooks."""
    outs: dict[str, list[torch.Tensor]] = {p: [] for p in MONITORED_PARTS}
    calls = dict.fromkeys(MONITORED_PARTS, 0)

    def capture(part: str):
        def hook(_m, _a, out):
            calls[part] += 1
            if out.requires_grad:
                outs[part].append(out)

        return hook

    handles = [get_module(model, path).register_forward_hook(capture(p)) for p, path in MONITORED_PARTS.items()]
    try:
        loss = model.training_step(batch, 0)
    finally:
        for h in handles:
            h.remove()
    parts = list(MONITORED_PARTS)
    tensors = [t for p in parts for t in outs[p][:num_large]]
    grads = torch.autograd.grad(loss, tensors)
    expected, i = {}, 0
    for p in parts:
        n = len(outs[p][:num_large])
        expected[p] = max(float(g.abs().max()) for g in grads[i : i + n])
        i += n
    return expected, calls


@pytest.mark.parametrize(
    ("spec", "extra", "crop_sizes"),
    [("block2", (), (16, 16)), ("projector", ("--num_crops_per_aug", "2", "1", "--crop_size", "16", "8"), (16, 16, 8))],
)
def test_grad_norms_match_autograd_grad(make_model, spec, extra, crop_sizes):
    """Recorded grad_linf per part equals an independent torch.autograd.grad on the same batch and loss."""
    model = make_model(spec, *extra)
    num_large = model.num_large_crops
    assert num_large == 2 and model.num_crops == len(crop_sizes)
    gen = torch.Generator().manual_seed(3)
    batch = [torch.arange(8), [torch.randn(8, 3, s, s, generator=gen) for s in crop_sizes],
             torch.randint(0, 10, (8,), generator=gen)]
    hooks = GradNormHooks(num_large_crops=num_large)
    assert hooks.attach(model) == list(MONITORED_PARTS)
    hooks.arm()
    model.training_step(batch, 0).backward()
    hooks.disarm()
    got = {p: float(v) for p, v in hooks.values().items()}
    hooks.detach()
    expected, calls = _independent_grad_norms(model, batch, num_large)
    assert set(got) == set(MONITORED_PARTS)
    for part in MONITORED_PARTS:
        assert got[part] > 0
        assert math.isclose(got[part], expected[part], rel_tol=1e-5, abs_tol=1e-12), (part, got[part], expected[part])
    if spec == "block2":  # the target pass ran the online layer3/layer4 (no_grad): seen by the hooks, not recorded
        assert calls["block4"] == 4 and calls["block1"] == 2
    else:  # the small crop went through every part but is not recorded
        assert calls["projector"] == 3


def _hook_dicts(model: nn.Module) -> list[dict]:
    return [get_module(model, path)._forward_hooks for path in MONITORED_PARTS.values()]


def test_monitor_off_installs_nothing_and_idle_steps_add_no_tensor_hooks(make_cfg, make_model, make_batch, tmp_path):
    """Without --grad_monitor no hook is installed; a disarmed monitor registers no tensor hooks."""
    cfg = make_cfg("projector")
    model = make_model("projector")
    assert cfg.analysis.grad_monitor is False
    assert analysis_callbacks(cfg, model, tmp_path) == []
    assert all(len(d) == 0 for d in _hook_dicts(model))
    assert len(model.backbone.layer4._forward_hooks) == 0

    on = make_cfg("projector", "--grad_monitor", "--grad_monitor_interval", "3")
    monitors = analysis_callbacks(on, model, tmp_path)
    assert len(monitors) == 1 and isinstance(monitors[0], GradNormMonitor) and monitors[0].interval == 3

    seen: list[torch.Tensor] = []
    probe = model.backbone.layer4.register_forward_hook(lambda _m, _a, out: seen.append(out))
    batch = make_batch(0)

    def step_hooks() -> list:
        seen.clear()
        model.training_step(batch, 0).backward()
        return [out._backward_hooks for out in seen if out.requires_grad]

    assert step_hooks() == [None, None]  # monitor off: the outputs carry no tensor hook
    hooks = GradNormHooks(num_large_crops=2)
    hooks.attach(model)
    assert [len(d) for d in _hook_dicts(model)] == [1, 1, 1, 1, 2, 1]  # one each, plus the probe on layer4
    assert step_hooks() == [None, None] and hooks.values() == {}  # attached but not armed: nothing
    hooks.arm()
    assert all(h is not None and len(h) == 1 for h in step_hooks())
    assert set(hooks.values()) == set(MONITORED_PARTS)
    hooks.detach()
    assert [len(d) for d in _hook_dicts(model)] == [0, 0, 0, 0, 1, 0]
    probe.remove()


class _Views(torch.utils.data.Dataset):
    """Seeded random training samples in the engine's format (index, [view1, view2], target)."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(i)
        return i, [torch.randn(3, 16, 16, generator=gen), torch.randn(3, 16, 16, generator=gen)], i % 10


class _Probe(pl.Callback):
    """Independent copies of projector.fc2's online and momentum weights after each optimizer step."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _take(self, trainer, pl_module) -> None:
        self.seen[trainer.global_step] = (
            pl_module.projector.fc2.weight.detach().clone(),
            pl_module.ema.copies.projector.fc2.weight.detach().clone(),
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self._take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx) -> None:
        self._take(trainer, pl_module)


@pytest.mark.parametrize("interval", [1, 2])
def test_weight_tracker_saves_the_weights_of_the_recorded_steps(make_model, tmp_path, interval):
    """weights_<part>.pt holds projector.fc2's online and momentum weights at steps 0, N, 2N, ... of a Trainer run."""
    model = make_model("projector", "--lr", "0.5", "--warmup_epochs", "0")
    tracker = WeightTracker("projector.fc2", tmp_path, interval=interval)
    probe = _Probe()
    loader = torch.utils.data.DataLoader(_Views(), batch_size=4, drop_last=True)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[tracker, probe])
    trainer.fit(model, loader)
    state = torch.load(tmp_path / "weights_projector.fc2.pt", weights_only=False)
    steps = list(range(0, 5, interval))
    assert state["steps"].tolist() == steps
    assert state["part"] == "projector.fc2" and state["shared"] is False and state["ema_parts"] == ["projector"]
    assert state["online"].shape == (len(steps), *model.projector.fc2.weight.shape)
    for row, step in enumerate(steps):
        online, target = probe.seen[step]
        assert torch.equal(state["online"][row], online)
        assert torch.equal(state["target"][row], target)
    assert not torch.equal(state["online"][-1], state["online"][0])  # training moved the weights
    assert not torch.equal(state["online"][-1], state["target"][-1])  # the target is the momentum copy
    assert math.isnan(state["tau"][0]) and state["tau"][-1] > 0.99


def test_weight_recorder_shared_part_and_refusals(make_model, make_cfg, tmp_path):
    """A part without momentum copy is recorded as shared; unknown or > 1M-element layers are refused in one line."""
    model = make_model("block4")
    rec = WeightRecorder(model, "projector.fc2")
    rec.record(0)
    state = rec.state()
    assert state["shared"] is True and torch.equal(state["online"][0], model.projector.fc2.weight)
    assert torch.equal(state["target"], state["online"])
    bias = WeightRecorder(model, "projector.fc2.bias")
    assert bias.param_name == "bias" and bias.online is model.projector.fc2.bias
    block = WeightRecorder(model, "block4.1.conv2", max_elements=10**7)
    assert block.online is model.backbone.layer4[1].conv2.weight and block.shared is False
    assert block.target is model.ema.copies.backbone.layer4[1].conv2.weight
    with pytest.raises(TrackWeightsError) as big:
        WeightRecorder(model, "backbone.layer4.0.conv2")  # 512 x 512 x 3 x 3 = 2.4M elements
    assert "more than 1,000,000" in str(big.value) and "\n" not in str(big.value)
    with pytest.raises(TrackWeightsError, match="projector"):
        WeightRecorder(model, "projector.fc7")
    with pytest.raises(UsageError, match=r"^--track_weights: .* more than 1,000,000"):
        make_cfg("block4", "--track_weights", "backbone.layer4.0.conv2")  # refused before any data is read
    cfg = make_cfg("block4", "--track_weights", "projector.fc2")
    cfg.analysis.track_weights = "backbone.layer4.0.conv2"
    with pytest.raises(TrackWeightsError):
        analysis_callbacks(cfg, model, tmp_path)


@pytest.mark.parametrize(
    ("spec", "online_parts", "forwards"),
    [
        ("all", ("backbone", "projector"), 2),
        ("projector", ("projector",), 1),
        ("block4+projector", ("backbone.layer4", "projector"), 2),
        ("none", (), 1),
    ],
)
def test_cost_accounting_counts_the_online_modules(make_cfg, make_model, spec, online_parts, forwards):
    """cost_of_model (meta device) equals params and Conv2d/Linear counts of the corresponding online modules."""
    cost = cost_of_model(build_model(make_cfg(spec), device="meta"))
    model = make_model(spec)
    modules = [get_module(model, p) for p in online_parts]
    params = sum(p.numel() for m in modules for p in m.parameters())
    layers = sum(isinstance(x, nn.Conv2d | nn.Linear) for m in modules for x in m.modules())
    assert cost["ema_parts"] == spec
    assert cost["momentum_params"] == params
    assert cost["ema_layers"] == layers
    assert cost["backbone_forwards_per_view"] == forwards
    assert cost["online_params"] == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("ema."))
    if spec == "all":
        assert layers == 20 + 2  # ResNet-18: 17 convs + 3 downsample convs; projector fc1, fc2
    if spec == "none":
        assert params == 0 and layers == 0


def _image_folder(root: Path, n: int = 8, size: int = 20) -> Path:
    for k, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            gen = torch.Generator().manual_seed(100 * k + i)
            pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_real_run_metrics_and_solo_ema_plot_pngs(tmp_path, capsys):
    """A tiny CLI run logs grad_linf/*, cost/* and weights; solo-ema-plot writes the three PNGs at their pixel sizes."""
    data = _image_folder(tmp_path / "imgs")
    argv = ["--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--ema_parts", "projector.fc2",
            "--proj_hidden_dim", "2", "--proj_output_dim", "32", "--pred_hidden_dim", "64", "--crop_size", "16",
            "--batch_size", "4", "--max_epochs", "1", "--train_subset", "12", "--val_subset", "8", "--knn_eval",
            "--num_workers", "0", "--log_dir", str(tmp_path / "runs"), "--name", "tiny",
            "--grad_monitor", "--grad_monitor_interval", "2", "--track_weights", "projector.fc2"]
    assert pretrain_main(argv) == 0
    run = tmp_path / "runs" / "tiny"
    rows = _csv_rows(run / "metrics.csv")
    cost = json.loads((run / "cost.json").read_text())
    cost_rows = [r for r in rows if r.get("cost/momentum_params")]
    assert len(cost_rows) == 1 and cost_rows[0]["step"] == "0"
    assert float(cost_rows[0]["cost/momentum_params"]) == cost["momentum_params"] == 2 * 32 + 32
    assert float(cost_rows[0]["cost/ema_layers"]) == cost["ema_layers"] == 1
    assert cost["steps"] == 3 and cost["median_step_time"] > 0 and cost["seconds_per_epoch"] > 0
    assert cost["seconds_per_epoch_source"] == "measured"
    assert any(r.get("cost/median_step_time") for r in rows)
    grad_steps = [int(r["step"]) for r in rows if r.get("grad_linf/projector")]
    assert grad_steps == [0, 2]
    for r in rows:
        if r.get("grad_linf/projector"):
            assert all(float(r[f"grad_linf/{p}"]) > 0 for p in MONITORED_PARTS)
    state = torch.load(run / "weights_projector.fc2.pt", weights_only=False)
    assert state["steps"].tolist() == [0, 1, 2, 3] and state["online"].shape == (4, 32, 2)

    capsys.readouterr()
    out = tmp_path / "img"
    assert plot_main([str(run), "--out", str(out), "--filters", "0", "1", "--log_y"]) == 0
    printed = capsys.readouterr().out.split()
    expected = {"grad_linf_tiny.png": (400, 640), "weights_projector.fc2.png": (380, 760), "accuracy.png": (400, 640)}
    assert sorted(Path(p).name for p in printed) == sorted(expected)
    for name, (h, w) in expected.items():
        img = mpimg.imread(out / name)
        assert img.shape[:2] == (h, w), name
        assert img[..., :3].std() > 0.01, name  # not a blank canvas
        assert (out / name).stat().st_size < 200_000


def test_plot_cli_errors_are_one_line(tmp_path):
    """A missing folder or a folder without metrics.csv: one line on stderr, exit code 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, words in ((tmp_path / "missing", "no run folder"), (empty, "no metrics.csv")):
        proc = subprocess.run([sys.executable, "-m", "solo_ema.plot", str(target)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and words in proc.stderr and proc.stdout == ""
