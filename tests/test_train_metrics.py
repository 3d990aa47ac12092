"""The loss curve's title."""

from __future__ import annotations

from pathlib import Path

from llavarad_cli.train.metrics import loss_curve_title


def test_title_names_the_stage_once():
    assert loss_curve_title("pretrain", Path("runs/pretrain")) == "llavarad pretrain"
    assert loss_curve_title("finetune", Path("runs/ft-lr2e-4")) == "llavarad finetune: ft-lr2e-4"
