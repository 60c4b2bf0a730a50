"""BN1 of Tables C.8 / D.9 in both readings: in the projector path only (default) or on the backbone output."""

from __future__ import annotations

import pytest
import torch

from solo_ema.pretrain import main

pytestmark = pytest.mark.usefixtures("single_thread")


def images(seed: int, n: int = 6) -> torch.Tensor:
    """Seeded 16x16 images."""
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", ["projector", "all"])
def test_bn1_on_backbone_output_is_seen_downstream(make_model, spec: str) -> None:
    """--bn1_position backbone: feats, classifier logits, kNN bank and projector all take BN1's output, once."""
    model = make_model(spec, "--bn_backbone_out", "--bn1_position", "backbone", "--knn_eval")
    model.eval()  # BN1 on running statistics: the same transform in every call below
    with torch.no_grad():
        model.feats_bn.running_mean.uniform_(-1, 1)
        model.feats_bn.running_var.uniform_(0.5, 2)
        X = images(1)
        raw = model.backbone(X)
        bn = model.feats_bn(raw)
        out = model(X)
        torch.testing.assert_close(out["feats"], bn)
        torch.testing.assert_close(out["logits"], model.classifier(bn))
        torch.testing.assert_close(out["z"], model.projector(bn))
        target = model.momentum_forward(X)
        torch.testing.assert_close(target["feats"], model.feats_bn(model.ema.copy_of("backbone")(X))
                                   if spec == "all" else bn)
    assert not torch.allclose(bn, raw, atol=1e-3)


def test_bn1_default_reading_is_the_projector_path_only(make_model) -> None:
    """Default: feats and the classifier see the raw pooled feature, only the projector sees BN1."""
    model = make_model("projector", "--bn_backbone_out")
    assert model.cfg.method_kwargs.bn1_position == "projector"
    model.eval()
    with torch.no_grad():
        model.feats_bn.running_mean.uniform_(-1, 1)
        X = images(2)
        raw = model.backbone(X)
        out = model(X)
        torch.testing.assert_close(out["feats"], raw)
        torch.testing.assert_close(out["logits"], model.classifier(raw))
        torch.testing.assert_close(out["z"], model.projector(model.feats_bn(raw)))


@pytest.mark.parametrize("extra", [["--bn1_position", "backbone"], ["--bn_backbone_out", "--bn1_position", "block4"]])
def test_bn1_position_bad_input_is_one_line_exit_2(small_args, capsys, extra: list[str]) -> None:
    """Without --bn_backbone_out, or with an unknown position: exit 2, one line naming the flag."""
    assert main(small_args("projector", *extra, "--dry_run")) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "--bn1_position" in err
