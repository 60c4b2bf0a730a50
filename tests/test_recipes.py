"""The shipped bash recipes: every pretrain and table script under DRY_RUN=1, resolved against the paper.

The scripts call ``${PYTHON:-python} -m solo_ema.pretrain``; here PYTHON is a tiny recorder that writes its
argv (one JSON line per call) and prints nothing, and every recorded argv is resolved in-process with
``solo_ema.pretrain.build_cfg``. Only two scripts run end-to-end with the real interpreter.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from solo_ema.data import DATASETS
from solo_ema.ema import parse_ema_spec
from solo_ema.methods import METHODS
from solo_ema.pretrain import build_cfg
from solo_ema.report import run_name, script_name

ROOT = Path(__file__).resolve().parents[1]
BASH = ROOT / "bash_files"
PRETRAIN = BASH / "pretrain"
TABLES = BASH / "tables"
PAPER_CSV = ROOT / "zoo" / "paper_results.csv"
METHOD_NAMES = ("byol", "dino", "mocov2plus", "ressl", "simclr", "simsiam")
RECIPE_DATASETS = ("cifar", "imagenet-100", "imagenet")

RECORDER = """#!{python} -S
import json, os, sys
with open(os.environ["SOLO_EMA_RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


# ----------------------------------------------------------------------------------------------------------
# helpers


def run_script(script: Path, args: list[str], record: Path, recorder: Path, **env: str):
    """Run a bash script with PYTHON=recorder (and DRY_RUN=1 unless env says otherwise); return (proc, argvs)."""
    record.unlink(missing_ok=True)
    full_env = {**os.environ, "PYTHON": str(recorder), "SOLO_EMA_RECORD": str(record), "DRY_RUN": "1", **env}
    for key in ("DATA_DIR", "LOG_DIR", "ROWS", "DALI"):
        if key not in env:
            full_env.pop(key, None)
    proc = subprocess.run(["bash", str(script), *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=120)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return proc, calls


def flag(argv: list[str], name: str) -> str | None:
    """The value of the last `--name VALUE` in an argv (None when absent)."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values[-1] if values else None


_CFG_CACHE: dict[tuple[str, ...], object] = {}


def resolve(call: list[str]):
    """build_cfg of a recorded `-m solo_ema.pretrain ...` call (cached: tables repeat configs)."""
    assert call[:2] == ["-m", "solo_ema.pretrain"], call
    key = tuple(call[2:])
    if key not in _CFG_CACHE:
        _CFG_CACHE[key] = build_cfg(list(key))
    return _CFG_CACHE[key]


def get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def lr_scale(cfg) -> float:
    return cfg.optimizer.batch_size * cfg.devices * cfg.num_nodes / 256


def paper_rows() -> OrderedDict[tuple[str, str], dict[str, str]]:
    """zoo/paper_results.csv, one entry per (table, row) with its settings and its metrics."""
    rows: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
    with PAPER_CSV.open(newline="") as f:
        for r in csv.DictReader(f):
            entry = rows.setdefault((r["table"], r["row"]), {**r, "metrics": []})
            entry["metrics"].append(r["metric"])
    return rows


PAPER = paper_rows()
PAPER_TABLES = list(dict.fromkeys(t for t, _ in PAPER))
with PAPER_CSV.open(newline="") as _f:
    PAPER_VALUES = {(r["table"], r["row"], r["metric"]): r["value"] for r in csv.DictReader(_f)}


@pytest.fixture(scope="module")
def recorder(tmp_path_factory) -> Path:
    """An executable that appends its argv as one JSON line to $SOLO_EMA_RECORD and prints nothing."""
    path = tmp_path_factory.mktemp("recorder") / "python"
    path.write_text(RECORDER.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Path:
    """Where the recorder writes."""
    return tmp_path_factory.mktemp("record") / "calls.jsonl"


@pytest.fixture(scope="module")
def pretrain_calls(recorder, record) -> dict[tuple[str, str], list[str]]:
    """(dataset, method) -> the recorded argv of every pretrain recipe under DRY_RUN=1 (cifar once per dataset)."""
    out = {}
    for ds in RECIPE_DATASETS:
        for method in METHOD_NAMES:
            for arg in (["cifar10", "cifar100"] if ds == "cifar" else [None]):
                proc, calls = run_script(PRETRAIN / ds / f"{method}.sh", [arg] if arg else [], record, recorder)
                assert proc.returncode == 0, proc.stderr
                assert len(calls) == 1, calls
                out[(arg or ds, method)] = calls[0]
    return out


@pytest.fixture(scope="module")
def table_calls(recorder, record) -> dict[str, list[tuple[list[str], list[str]]]]:
    """table id -> [(pretrain argv, tag argv)] of its script under DRY_RUN=1."""
    out = {}
    for table in PAPER_TABLES:
        proc, calls = run_script(TABLES / script_name(table), [], record, recorder)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "", proc.stdout
        # the recipe and the --tag filter run side by side in a pipe: either may record first, rows in order
        pretrain = [c for c in calls if c[:2] == ["-m", "solo_ema.pretrain"]]
        tags = [c for c in calls if c[:2] == ["-m", "solo_ema.report"]]
        assert len(pretrain) == len(tags) == len(calls) / 2, calls
        out[table] = list(zip(pretrain, tags))
    return out


# ----------------------------------------------------------------------------------------------------------
# every bash file


def test_every_bash_file_parses_and_is_strict() -> None:
    """Every shipped .sh passes `bash -n` and sets -euo pipefail; the runnable ones name their source."""
    files = sorted(BASH.rglob("*.sh"))
    # recipes, linear wrappers + _linear.sh, tables + _rows.sh, the evidence script
    assert len(files) == 18 + 18 + 1 + len(PAPER_TABLES) + 1 + 1
    for path in files:
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"
        text = path.read_text()
        assert "set -euo pipefail" in text, path
        delegates = re.search(r'exec bash "\$\(dirname "\$0"\)/([\w./-]+\.sh)"', text)
        assert ('"${PYTHON:-python}" -m solo_ema.' in text or "run_row " in text or path.name == "_rows.sh"
                or (delegates and (path.parent / delegates.group(1)).is_file())), path
    for path in PRETRAIN.rglob("*.sh"):
        text = path.read_text()
        assert "solo-learn" in text and "Appendix A" in text, path
        assert text.rstrip().endswith('"$@"'), path


def test_every_table_of_the_csv_has_a_script() -> None:
    """Each table of zoo/paper_results.csv has bash_files/tables/<table>.sh, and there is no other table script."""
    expected = {script_name(t) for t in PAPER_TABLES}
    assert expected >= {"table1.sh", "table2.sh", "table3.sh", "table4.sh", "table5.sh", "table6.sh",
                        "table7.sh", "tableC8.sh", "fig4.sh", "fig6.sh"}
    assert {p.name for p in TABLES.glob("*.sh")} - {"_rows.sh"} == expected


# ----------------------------------------------------------------------------------------------------------
# pretrain recipes


def test_every_pretrain_recipe_resolves(pretrain_calls) -> None:
    """Each recipe calls solo_ema.pretrain once with --dry_run, and its config resolves (method, EMA, dataset)."""
    assert len(pretrain_calls) == 4 * 6
    for (dataset, method), call in pretrain_calls.items():
        assert "--dry_run" in call
        cfg = resolve(call)
        assert cfg.method == method and cfg.method in METHODS
        assert cfg.data.dataset in DATASETS
        assert cfg.data.dataset == {"imagenet-100": "imagenet100"}.get(dataset, dataset)
        if dataset in ("imagenet-100", "imagenet"):
            assert cfg.data.train_path == f"./datasets/{dataset}/train"
            assert cfg.data.val_path == f"./datasets/{dataset}/val"
        else:
            assert cfg.data.train_path == cfg.data.val_path == "./datasets"
        assert str(parse_ema_spec(cfg.momentum.parts)) == cfg.momentum.parts


LARS_CLIP = {"optimizer.name": "lars", "optimizer.kwargs.eta": 0.02, "optimizer.kwargs.clip_lr": True,
             "optimizer.kwargs.exclude_bias_n_norm": True}
SGD = {"optimizer.name": "sgd"}
DINO_KW = {"proj_output_dim": 256, "proj_hidden_dim": 2048, "num_prototypes": 4096, "student_temperature": 0.1,
           "teacher_temperature": 0.07, "warmup_teacher_temperature": 0.04, "warmup_teacher_temperature_epochs": 50}
RESSL_KW = {"proj_output_dim": 256, "proj_hidden_dim": 4096, "temperature_q": 0.1, "temperature_k": 0.04,
            "queue_size": 65536}
IN_ASYM = [(1, 0.4, 0.4, 0.2, 0.1, 1.0, 0.0), (1, 0.4, 0.4, 0.2, 0.1, 0.1, 0.2)]


def views(crops, b, c, s, h, blur, sol):
    """Per-pipeline (num_crops, brightness, contrast, saturation, hue, blur prob, solarization prob)."""
    return [(n, b, c, s, h, g, z) for n, g, z in zip(crops, blur, sol)]


# solo-learn 1.0.5's bash-file values (docs: /work/shared/solo_learn_contract.md section 4), 200 epochs, beta 0.99
RECIPES = {
    ("cifar", "byol"): dict(opt=LARS_CLIP, lr=1.0, cls=0.1, wd=1e-5, tau=(0.99, 1.0), momcls=True,
                            kw={"proj_output_dim": 256, "proj_hidden_dim": 4096, "pred_hidden_dim": 4096},
                            views=views([1, 1], 0.4, 0.4, 0.2, 0.1, [0, 0], [0, 0.2])),
    ("cifar", "dino"): dict(opt=LARS_CLIP, lr=0.3, cls=0.1, wd=1e-6, tau=(0.99, 1.0), momcls=True, kw=DINO_KW,
                            views=views([1, 1], 0.4, 0.4, 0.2, 0.1, [0, 0], [0, 0.2])),
    ("cifar", "mocov2plus"): dict(opt=SGD, lr=0.3, cls=0.3, wd=1e-4, tau=(0.99, 0.999), momcls=True,
                                  kw={"proj_output_dim": 128, "proj_hidden_dim": 2048, "queue_size": 32768,
                                      "temperature": 0.2},
                                  views=views([1, 1], 0.4, 0.4, 0.4, 0.1, [0, 0], [0, 0])),
    ("cifar", "ressl"): dict(opt=SGD, lr=0.05, cls=0.1, wd=1e-4, tau=(0.99, 1.0), momcls=True, kw=RESSL_KW,
                             views=[(1, 0.4, 0.4, 0.2, 0.1, 0, 0), (1, 0, 0, 0, 0, 0, 0)]),
    ("cifar", "simclr"): dict(opt=LARS_CLIP, lr=0.4, cls=0.1, wd=1e-5, tau=None, momcls=False,
                              kw={"proj_output_dim": 256, "proj_hidden_dim": 2048, "temperature": 0.2},
                              views=views([1, 1], 0.8, 0.8, 0.8, 0.2, [0, 0], [0, 0])),
    ("cifar", "simsiam"): dict(opt=SGD, lr=0.5, cls=0.1, wd=1e-5, tau=None, momcls=False, zero_init=True,
                               kw={"proj_output_dim": 2048, "proj_hidden_dim": 2048, "pred_hidden_dim": 512},
                               views=views([1, 1], 0.4, 0.4, 0.4, 0.1, [0, 0], [0, 0])),
    ("imagenet-100", "byol"): dict(opt=LARS_CLIP, lr=0.5, cls=0.1, wd=1e-5, tau=(0.99, 1.0), momcls=False,
                                   kw={"proj_output_dim": 256, "proj_hidden_dim": 4096, "pred_hidden_dim": 8192},
                                   views=IN_ASYM),
    ("imagenet-100", "dino"): dict(opt=LARS_CLIP, lr=0.3, cls=0.1, wd=1e-6, tau=(0.99, 1.0), momcls=False,
                                   kw=DINO_KW, views=IN_ASYM),
    ("imagenet-100", "mocov2plus"): dict(opt=SGD, lr=0.3, cls=0.3, wd=1e-4, tau=(0.99, 0.999), momcls=True,
                                         kw={"proj_output_dim": 128, "proj_hidden_dim": 2048, "queue_size": 65536,
                                             "temperature": 0.2},
                                         views=views([2], 0.4, 0.4, 0.4, 0.1, [0.5], [0])),
    ("imagenet-100", "ressl"): dict(opt=SGD, lr=0.3, cls=0.1, wd=1e-4, tau=(0.99, 1.0), momcls=True, kw=RESSL_KW,
                                    views=[(1, 0.4, 0.4, 0.4, 0.1, 0.5, 0), (1, 0, 0, 0, 0, 0, 0)], sync=False),
    ("imagenet-100", "simclr"): dict(opt=LARS_CLIP, lr=0.3, cls=0.3, wd=1e-4, tau=None, momcls=False,
                                     kw={"proj_output_dim": 128, "proj_hidden_dim": 2048, "temperature": 0.2},
                                     views=views([2], 0.8, 0.8, 0.8, 0.2, [0.5], [0])),
    ("imagenet-100", "simsiam"): dict(opt=SGD, lr=0.5, cls=0.1, wd=1e-5, tau=None, momcls=False, zero_init=True,
                                      kw={"proj_output_dim": 2048, "proj_hidden_dim": 2048, "pred_hidden_dim": 512},
                                      views=views([2], 0.4, 0.4, 0.4, 0.1, [0.5], [0])),
    ("imagenet", "byol"): dict(opt={"optimizer.name": "lars", "optimizer.kwargs.eta": 0.001,
                                    "optimizer.kwargs.clip_lr": False, "optimizer.kwargs.exclude_bias_n_norm": True},
                               lr=0.45 * 16, cls=0.2 * 16, wd=1e-6, tau=(0.99, 1.0), momcls=True, accumulate=16,
                               kw={"proj_output_dim": 256, "proj_hidden_dim": 4096, "pred_hidden_dim": 4096},
                               views=IN_ASYM),
    ("imagenet", "mocov2plus"): dict(opt=SGD, lr=0.3, cls=0.4, wd=3e-5, tau=(0.99, 0.999), momcls=True,
                                     kw={"proj_output_dim": 128, "proj_hidden_dim": 2048, "queue_size": 65536,
                                         "temperature": 0.1},
                                     views=[(1, 0.4, 0.4, 0.2, 0.1, 1.0, 0.0), (1, 0.4, 0.4, 0.2, 0.1, 0.1, 0.2)]),
}
for _m in ("dino", "ressl", "simclr", "simsiam"):  # no ImageNet-1K file in solo-learn 1.0.5: ImageNet-100's values
    RECIPES[("imagenet", _m)] = RECIPES[("imagenet-100", _m)]
SETUP = {  # the paper's Appendix A
    "cifar": dict(backbone="resnet18", devices=1, batch=256, strategy="auto", crop=32),
    "imagenet-100": dict(backbone="resnet18", devices=2, batch=128, strategy="ddp", crop=224),
    "imagenet": dict(backbone="resnet50", devices=2, batch=128, strategy="ddp", crop=224),
}


@pytest.mark.parametrize(("ds", "method"), list(RECIPES), ids=[f"{d}-{m}" for d, m in RECIPES])
def test_pretrain_recipe_values(pretrain_calls, ds, method) -> None:
    """A recipe resolves to the paper's setup (200 epochs, warm-up cosine 10, beta 0.99) and solo-learn's values."""
    r, s = RECIPES[(ds, method)], SETUP[ds]
    keys = [("cifar10", method), ("cifar100", method)] if ds == "cifar" else [(ds, method)]
    for key in keys:
        cfg = resolve(pretrain_calls[key])
        assert cfg.max_epochs == 200
        assert (cfg.scheduler.name, cfg.scheduler.warmup_epochs) == ("warmup_cosine", 10)
        assert cfg.backbone.name == s["backbone"]
        assert (cfg.devices, cfg.optimizer.batch_size, cfg.strategy) == (s["devices"], s["batch"], s["strategy"])
        assert cfg.sync_batchnorm is (ds != "cifar" and r.get("sync", True))
        assert cfg.accumulate_grad_batches == r.get("accumulate", 1)
        # solo-learn 1.0.5 multiplied lr, classifier lr, warm-up start lr and min lr by the accumulation
        assert cfg.scheduler.warmup_start_lr == pytest.approx(3e-5 * r.get("accumulate", 1))
        assert cfg.scheduler.min_lr == 0.0
        assert bool(cfg.backbone.kwargs.zero_init_residual) is r.get("zero_init", False)
        for key_, value in r["opt"].items():
            assert get(cfg, key_) == value, key_
        assert cfg.optimizer.lr == pytest.approx(r["lr"] * lr_scale(cfg))
        assert cfg.optimizer.classifier_lr == pytest.approx(r["cls"] * lr_scale(cfg))
        assert cfg.optimizer.weight_decay == pytest.approx(r["wd"])
        for name, value in r["kw"].items():
            assert cfg.method_kwargs[name] == pytest.approx(value), name
        if r["tau"] is None:
            assert cfg.momentum.parts == "none"
        else:
            assert (cfg.momentum.base_tau, cfg.momentum.final_tau) == r["tau"]
            assert cfg.momentum.parts == "all"
        assert cfg.momentum.classifier is r["momcls"]
        got = [(a.num_crops, a.color_jitter.brightness, a.color_jitter.contrast, a.color_jitter.saturation,
                a.color_jitter.hue, a.gaussian_blur.prob, a.solarization.prob) for a in cfg.augmentations]
        assert got == [tuple(pytest.approx(v) for v in view) for view in r["views"]]
        assert all(a.crop_size == s["crop"] and a.rrc.crop_min_scale == 0.08 for a in cfg.augmentations)
        assert all(a.color_jitter.prob == 0.8 and a.grayscale.prob == 0.2 for a in cfg.augmentations)


def test_dino_recipes_use_the_papers_beta(pretrain_calls) -> None:
    """DINO: beta 0.99 (the paper's) and not solo-learn's 0.9995, with a comment saying so."""
    for ds in RECIPE_DATASETS:
        text = (PRETRAIN / ("imagenet-100" if ds == "imagenet" else ds) / "dino.sh").read_text()  # 1K delegates
        assert "0.9995" in text and "0.99" in text
        cfg = resolve(pretrain_calls[("cifar100" if ds == "cifar" else ds, "dino")])
        assert cfg.momentum.base_tau == 0.99


def test_imagenet_recipes_use_dali_unless_turned_off(recorder, record) -> None:
    """The ImageNet recipes pass --dali (solo-learn's loaders) and DALI=0 drops it."""
    for ds in ("imagenet-100", "imagenet"):
        _, calls = run_script(PRETRAIN / ds / "byol.sh", [], record, recorder)
        assert "--dali" in calls[0] and resolve(calls[0]).data.format == "dali"
        _, calls = run_script(PRETRAIN / ds / "byol.sh", [], record, recorder, DALI="0")
        assert "--dali" not in calls[0] and resolve(calls[0]).data.format == "image_folder"


def test_extra_args_come_last_and_env_sets_folders(recorder, record, tmp_path) -> None:
    """Extra flags override the recipe's; DATA_DIR / LOG_DIR set the folders (default ./datasets, ./runs)."""
    args = ["cifar100", "--ema_parts", "projector", "--base_tau_momentum", "0.9995", "--name", "x"]
    _, calls = run_script(PRETRAIN / "cifar" / "byol.sh", args, record, recorder)
    cfg = resolve(calls[0])
    assert (cfg.momentum.parts, cfg.momentum.base_tau, cfg.name) == ("projector", 0.9995, "x")
    assert (cfg.data.data_dir, cfg.logging.log_dir) == ("./datasets", "./runs")
    _, calls = run_script(PRETRAIN / "cifar" / "byol.sh", ["cifar10"], record, recorder,
                          DATA_DIR=str(tmp_path / "d"), LOG_DIR=str(tmp_path / "l"), DRY_RUN="0")
    assert "--dry_run" not in calls[0]
    cfg = resolve(calls[0])
    assert (cfg.data.data_dir, cfg.logging.log_dir) == (str(tmp_path / "d"), str(tmp_path / "l"))


def test_cifar_recipe_rejects_another_dataset(recorder, record) -> None:
    """A CIFAR recipe given another dataset exits 2 with its usage line and runs nothing."""
    proc, calls = run_script(PRETRAIN / "cifar" / "byol.sh", ["imagenet"], record, recorder)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "cifar10|cifar100" in proc.stderr
    assert calls == []


# ----------------------------------------------------------------------------------------------------------
# table scripts


def _expected_parts(spec: str) -> str:
    return str(parse_ema_spec(spec))


@pytest.mark.parametrize("table", PAPER_TABLES)
def test_table_rows_and_settings_match_the_paper(table_calls, table) -> None:
    """A table script runs each csv row once, named table{T}-{row}, with the row's settings from the csv."""
    calls = table_calls[table]
    expected = [row for t, row in PAPER if t == table]
    assert sorted(tag[-1] for _, tag in calls) == sorted(expected)  # each row once, no other run
    for call, tag in calls:
        assert tag == ["-m", "solo_ema.report", "--tag", table, tag[-1]]
        p = PAPER[(table, tag[-1])]
        assert flag(call, "--name") == run_name(table, p["row"])
        cfg = resolve(call)
        assert cfg.name == run_name(table, p["row"])
        assert cfg.method == p["method"]
        assert cfg.momentum.parts == _expected_parts(p["ema_parts"]), p["row"]
        assert cfg.momentum.base_tau == pytest.approx(float(p["beta"]))
        if float(p["beta"]) in (0.0, 1.0):
            assert cfg.momentum.final_tau == float(p["beta"])  # shared / frozen for the whole run
        if p["lr"]:
            assert cfg.optimizer.lr / lr_scale(cfg) == pytest.approx(float(p["lr"]))
        assert cfg.data.dataset == p["dataset"]
        assert cfg.backbone.name == p["backbone"]
        trained_epochs = 0 if cfg.optimizer.lr == 0 else cfg.max_epochs
        assert trained_epochs == int(p["epochs"])
        if p["proj_hidden_dim"]:
            assert cfg.method_kwargs.proj_hidden_dim == int(p["proj_hidden_dim"])
        assert bool(cfg.method_kwargs.bn_backbone_out) is (p["bn1"] == "1")
        assert bool(cfg.method_kwargs.bn_projector_out) is (p["bn2"] == "1")
        if "knn1" in p["metrics"]:  # the paper's KNN-1: solo-learn 1.0.x's metric
            assert cfg.knn_eval.enabled and cfg.knn_eval.distance_func == "paper"
        else:
            assert not cfg.knn_eval.enabled
        if int(p["epochs"]) == 0:  # the fixed random encoder: only the linear classifier learns
            assert cfg.optimizer.classifier_lr > 0 and cfg.max_epochs == 200


def test_table_rows_filter_and_extra_args(recorder, record) -> None:
    """ROWS picks rows; a table script's own arguments reach every row, after the row's flags."""
    proc, calls = run_script(TABLES / "table3.sh", ["--max_epochs", "1", "--base_tau_momentum", "0.5"], record,
                             recorder, ROWS="byol-projector dino-all")
    assert proc.returncode == 0, proc.stderr
    pretrain = [c for c in calls if c[:2] == ["-m", "solo_ema.pretrain"]]
    assert [flag(c, "--name") for c in pretrain] == ["table3-byol-projector", "table3-dino-all"]
    for call in pretrain:
        assert call[-4:] == ["--max_epochs", "1", "--base_tau_momentum", "0.5"]
        assert resolve(call).momentum.base_tau == 0.5


def test_table_script_dry_run_prints_tagged_json_with_the_real_python(tmp_path) -> None:
    """End to end: DRY_RUN=1 table7.sh prints one JSON line per row: the --dry_run config plus table and row."""
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "ROWS": "fixed-projector-lr4",
           "OMP_NUM_THREADS": "1", "LOG_DIR": str(tmp_path / "runs")}
    proc = subprocess.run(["bash", str(TABLES / "table7.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert (out["table"], out["row"], out["name"]) == ("7", "fixed-projector-lr4", "table7-fixed-projector-lr4")
    assert out["momentum"]["parts"] == "projector" and out["momentum"]["base_tau"] == 1.0
    assert out["optimizer"]["lr"] == 4.0
    assert out["cost"]["backbone_forwards_per_view"] == 1
    assert not (tmp_path / "runs").exists()


def test_pretrain_script_dry_run_with_the_real_python(tmp_path) -> None:
    """End to end: DRY_RUN=1 cifar/simclr.sh cifar10 prints the resolved config as one JSON object."""
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "OMP_NUM_THREADS": "1",
           "LOG_DIR": str(tmp_path / "runs")}
    proc = subprocess.run(["bash", str(PRETRAIN / "cifar" / "simclr.sh"), "cifar10"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert (out["method"], out["data"]["dataset"], out["momentum"]["parts"]) == ("simclr", "cifar10", "none")
    assert out["cost"]["momentum_params"] == 0
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dataset", ["cifar", "imagenet-100", "imagenet"])
def test_linear_scripts_pass_checkpoint_folders_and_extra_flags(dataset: str) -> None:
    """Each linear wrapper runs the shared recipe on its checkpoint, its dataset folders, then the extra flags."""
    for method in ("byol", "dino", "mocov2plus", "ressl", "simclr", "simsiam"):
        script = BASH / "linear" / dataset / f"{method}.sh"
        proc = subprocess.run(["bash", str(script), "ck.ckpt", "--max_epochs", "3"], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": "echo"})
        assert proc.returncode == 0, proc.stderr
        argv = proc.stdout.split()
        assert argv[:4] == ["-m", "solo_ema.linear", "--pretrained_feature_extractor", "ck.ckpt"]
        assert argv[-2:] == ["--max_epochs", "3"]
        folders = [] if dataset == "cifar" else ["--train_dir", f"{dataset}/train", "--val_dir", f"{dataset}/val"]
        assert argv[-2 - len(folders):-2] == folders
        missing = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        assert missing.returncode == 2 and "usage:" in missing.stderr


@pytest.mark.parametrize("table", ["tableC8", "tableD9"])
def test_bn1_tables_run_the_other_reading_as_documented(recorder, record, table: str) -> None:
    """The header's command for the second BN1 reading: the BN1 rows with --bn1_position backbone."""
    rows = "projector-bn1 projector-bn1-bn2"
    proc, calls = run_script(TABLES / f"{table}.sh", ["--bn1_position", "backbone"], record, recorder, ROWS=rows)
    assert proc.returncode == 0, proc.stderr
    header = (TABLES / f"{table}.sh").read_text()
    assert "--bn1_position backbone" in header and "--bn1_position projector" in header
    pretrain = [c for c in calls if c[:2] == ["-m", "solo_ema.pretrain"]]
    assert len(pretrain) == 2
    for call in pretrain:
        cfg = resolve(call)
        assert cfg.method_kwargs.bn_backbone_out and cfg.method_kwargs.bn1_position == "backbone"
    default = [c for c in run_script(TABLES / f"{table}.sh", [], record, recorder, ROWS=rows)[1]
               if c[:2] == ["-m", "solo_ema.pretrain"]]
    assert [resolve(c).method_kwargs.bn1_position for c in default] == ["projector", "projector"]


def test_table4_cost_columns_in_the_papers_units(table_calls) -> None:
    """Table 4's rows, as the script resolves them, count 53 / 3 EMA layers, 47.0 / 23.5 M backbone parameters held
    and 2 / 1 backbone forwards: the paper's numbers within their printed rounding."""
    import torchvision

    from solo_ema.analysis.cost import cost_of_model
    from solo_ema.pretrain import build_model

    resnet50 = torchvision.models.resnet50()
    backbone = sum(p.numel() for n, p in resnet50.named_parameters() if not n.startswith("fc."))
    for call, tag in table_calls["4"]:
        row = tag[-1]
        cost = cost_of_model(build_model(resolve(call), device="meta"))
        paper = {m: PAPER_VALUES[("4", row, m)] for m in ("ema_layers", "params_m", "backbone_forwards")}
        assert cost["ema_layers_paper"] == int(paper["ema_layers"]), row
        assert round(cost["params_m_paper"], 1) == pytest.approx(float(paper["params_m"])), row
        assert cost["backbone_forwards_per_view"] == int(paper["backbone_forwards"]), row
        copies = 2 if row == "dino-all" else 1
        assert cost["backbone_params_held"] == copies * backbone
        assert cost["ema_layers"] != cost["ema_layers_paper"]  # solo-ema's own count stays beside it


def test_evidence_script_passes_commit_and_records_warmup(recorder, record, tmp_path) -> None:
    """COMMIT reaches the collector as --commit (a source export has no git); the stored command names the
    warm-up epochs; without COMMIT no --commit is passed. The recipe calls are recorded, nothing trains."""
    script = BASH / "evidence" / "fashion_mnist_byol.sh"
    env = {"DRY_RUN": "0", "EPOCHS": "3", "WARMUP_EPOCHS": "0.5", "LOG_DIR": str(tmp_path), "OUT": str(tmp_path)}
    proc, calls = run_script(script, ["--num_workers", "2"], record, recorder, COMMIT="0123abcd4567", **env)
    assert proc.returncode == 0, proc.stderr
    pretrain = [c for c in calls if c[:2] == ["-m", "solo_ema.pretrain"]]
    collect = [c for c in calls if c[:2] == ["-m", "solo_ema.analysis.evidence"]]
    assert [flag(c, "--ema_parts") for c in pretrain] == ["all", "projector", "none"]
    assert all(flag(c, "--warmup_epochs") == "0.5" and flag(c, "--max_epochs") == "3" for c in pretrain)
    assert len(collect) == 1 and flag(collect[0], "--commit") == "0123abcd4567"
    assert flag(collect[0], "--command").startswith("EPOCHS=3 WARMUP_EPOCHS=0.5 SEED=5 ")
    proc, calls = run_script(script, [], record, recorder, **env)
    assert proc.returncode == 0, proc.stderr
    assert [flag(c, "--commit") for c in calls if c[:2] == ["-m", "solo_ema.analysis.evidence"]] == [None]
