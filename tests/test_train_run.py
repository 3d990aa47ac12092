"""Training end to end on tiny models and real Open-I records.

Three tests start real DeepSpeed workers through `deepspeed.launcher.runner` (2 CPU processes, gloo): stage 1,
stage 2 (whose output `llavarad infer` loads), and a stage-2 run whose rank 1 is SIGKILLed mid-run and then
resumed by rerunning the same command. One more trains in this process (world size 1) to check counted skips
and resume after a lost checkpoint without paying for subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

import _train_setup as ts
from llavarad_cli.cli import app

runner = CliRunner()
# Every optimizer step sees all 4 records (2 workers x 1 per device x 2 accumulation): loss must fall.
TRAIN = {"global_batch_size": 4, "per_device_batch_size": 1, "epochs": 6}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _cli(stage: str, spec: Path, *extra: str, env: dict | None = None):
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return runner.invoke(app, [stage, str(spec), "--num-workers", "2",
                                   "--set", f"launcher.master_port={_free_port()}", *extra])
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return ts.tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("pretrain")
    spec = ts.write_spec(root / "pretrain.yaml", "pretrain", assets, root / "out",
                         train={**TRAIN, "learning_rate": 0.05}, output={"save_steps": 2, "save_total_limit": 2})
    result = _cli("pretrain", spec)
    assert result.exit_code == 0, result.output
    return root / "out"


def _finetune_spec(root: Path, assets: dict, projector: Path) -> Path:
    return ts.write_spec(root / "finetune.yaml", "finetune", assets, root / "out",
                         model={"pretrained_projector": str(projector)},
                         train={**TRAIN, "learning_rate": 0.01, "lr_scheduler": "cosine", "warmup_ratio": 0.2},
                         output={"save_steps": 2, "save_total_limit": 1})


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, assets, pretrained):
    root = tmp_path_factory.mktemp("finetune")
    result = _cli("finetune", _finetune_spec(root, assets, pretrained / "projector.safetensors"), "--merge")
    assert result.exit_code == 0, result.output
    return root / "out"


def test_pretrain_on_two_workers_trains_the_projector_only(pretrained):
    import torch

    losses = _losses(pretrained)
    assert len(losses) == 6 and losses[-1] < losses[0]
    native = json.loads((pretrained / "llavarad.json").read_text())
    assert native["lm_weights"] == "none" and native["template"] == "plain"
    assert not (pretrained / "adapter_model.safetensors").exists()
    projector = _tensors(pretrained / "projector.safetensors")
    # The reference's file, with its key names, for LLaVA's own scripts.
    legacy = torch.load(pretrained / "mm_projector.bin", weights_only=True)
    assert sorted(legacy) == sorted(f"model.mm_projector.{k}" for k in projector)
    assert all(torch.equal(legacy[f"model.mm_projector.{k}"], v) for k, v in projector.items())
    # save_total_limit 2 of checkpoints 2, 4, 6; each one complete with optimizer, RNG and data position.
    kept = sorted(p.name for p in pretrained.glob("checkpoint-*"))
    assert kept == ["checkpoint-4", "checkpoint-6"]
    state = json.loads((pretrained / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["world_size"] == 2 and state["samples_seen"] == 24
    assert sorted(p.name for p in (pretrained / "checkpoint-6" / "rng").iterdir()) == ["rank0.pt", "rank1.pt"]
    # The frozen tower is never written again into a checkpoint: each one hard-links the run folder's one copy
    # (also the final output's), so checkpoints stay self-contained without a tower's worth of disk each.
    linked = sorted(pretrained.glob("checkpoint-*/weights/vision_tower.*"))
    assert len(linked) == 2 * len(kept)
    assert all(path.samefile(pretrained / path.name) for path in linked)
    assert (pretrained / "loss_curve.png").stat().st_size > 0


def test_finetune_on_two_workers_loads_in_infer_and_generates(finetuned, assets, pretrained):
    losses = _losses(finetuned)
    assert losses[-1] < losses[0]
    # Two warm-up steps of six: step 1 ran at rate 0, step 2 at half the peak, step 3 at the peak.
    lrs = [json.loads(line)["lr"] for line in (finetuned / "metrics.jsonl").read_text().splitlines()]
    assert lrs[:3] == pytest.approx([0.0, 0.005, 0.01])
    native = json.loads((finetuned / "llavarad.json").read_text())
    assert native["lm_weights"] == "adapter" and native["template"] == "v1"
    adapter_cfg = json.loads((finetuned / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"}
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8
    # The projector trained on from stage 1.
    assert not _same(_tensors(finetuned / "projector.safetensors"), _tensors(pretrained / "projector.safetensors"))
    image = str(assets["images"] / "CXR7_IM-2263-1001.png")
    findings = {}
    for model in (finetuned, finetuned / "merged"):
        result = runner.invoke(app, ["infer", "--image", image, "--reason", "Preop lumbar surgery",
                                     "--model", str(model), "--device", "cpu", "--max-new-tokens", "8", "--json"])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output[result.output.index("{"):])
        assert isinstance(answer["findings"], str) and answer["model"] == str(model)
        findings[model] = answer["findings"]
    # `--merge` folds the adapter into the LM: the same model, so the same tokens and (near enough) the same
    # logits; and not the base LM's, so the adapter really is in the merged weights.
    assert findings[finetuned] == findings[finetuned / "merged"]
    _assert_merged_is_the_adapter_model(finetuned, finetuned / "merged", assets["lm"])


def _assert_merged_is_the_adapter_model(adapter_dir: Path, merged_dir: Path, base_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from llavarad_cli.model.loading import load_model
    from llavarad_cli.prompts import IMAGE_TOKEN_INDEX

    adapter, _ = load_model(str(adapter_dir), device="cpu")
    merged, _ = load_model(str(merged_dir), device="cpu")
    assert json.loads((merged_dir / "llavarad.json").read_text())["lm_weights"] == "full"
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6, 7, 8]])
    px = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids, None, pixel_values=px).logits,
                                   adapter(ids, None, pixel_values=px).logits, atol=1e-5, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir)).state_dict()
    changed = [k for k, v in merged.lm.state_dict().items() if k in base and not torch.equal(v, base[k])]
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed), changed[:4]


def test_killed_worker_is_reported_and_rerun_resumes_to_identical_weights(tmp_path, assets, pretrained, finetuned):
    spec = _finetune_spec(tmp_path, assets, pretrained / "projector.safetensors")
    killed = _cli("finetune", spec, env={"LLAVARAD_DEBUG_KILL_AFTER_STEP": "1:3"})
    assert killed.exit_code == 1
    # Rank 0 either sees its connection break or is stopped by DeepSpeed's launcher first (which kills the other
    # ranks once one has died): the SIGKILLed rank is named either way.
    assert "worker rank 1 was killed" in killed.output and "resume" in killed.output
    out = tmp_path / "out"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "llavarad.json").exists()
    resumed = _cli("finetune", spec)
    assert resumed.exit_code == 0, resumed.output
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        assert _same(_tensors(out / name), _tensors(finetuned / name)), name
    assert _losses(out) == _losses(finetuned)


def _run_in_process(spec) -> dict:
    """What one worker does, in this process (world size 1), from the run files the parent writes.

    Not through worker.main, which leaves the process group at the end (DeepSpeed keeps its groups cached, so a
    second run in the same process could not start)."""
    from llavarad_cli.train import worker
    from llavarad_cli.train.run import RESOLVED_SPEC, plan_run, write_run_files

    out = write_run_files(plan_run(spec, num_workers=1))
    return worker.run(*worker.read_run_files(out / RESOLVED_SPEC))


def test_in_process_run_counts_missing_images_and_resumes_after_a_lost_checkpoint(tmp_path, assets, monkeypatch):
    from llavarad_cli import specs

    records = json.loads(Path(assets["records"]).read_text())
    broken = dict(records[0], id="broken", image="no-such-image.png")
    (tmp_path / "records.json").write_text(json.dumps(records + [broken]))
    spec_path = ts.write_spec(tmp_path / "run.yaml", "finetune", {**assets, "records": tmp_path / "records.json"},
                              tmp_path / "out", data={"num_workers": 1},
                              train={"global_batch_size": 5, "per_device_batch_size": 5, "epochs": 4,
                                     "learning_rate": 0.01, "lr_scheduler": "cosine"},
                              output={"save_steps": 2, "save_total_limit": 3})
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    spec = specs.load_spec(spec_path, "finetune")
    first = _run_in_process(spec)
    out = tmp_path / "out"
    assert first["steps"] == 4 and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert first["skipped"]["missing_image"] == 4  # the broken record, read once per epoch
    skipped = [json.loads(line) for line in (out / "logs" / "skipped-rank0.jsonl").read_text().splitlines()]
    assert {s["id"] for s in skipped} == {"broken"}
    # Each row's learning rate is the one its optimizer step used (cosine from the peak, no warm-up), not the
    # next step's (which is where the schedule stands after engine.step()).
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])
    final = {n: _tensors(out / n) for n in ("adapter_model.safetensors", "projector.safetensors")}
    # Lose the last checkpoint and the outputs: rerunning resumes at step 2 and lands on the same weights.
    shutil.rmtree(out / "checkpoint-4")
    (out / "llavarad.json").unlink()
    second = _run_in_process(spec)
    assert second["skipped"] == first["skipped"]
    for name, tensors in final.items():
        assert _same(_tensors(out / name), tensors), name
    # An intermediate checkpoint's weights/ links the run folder's tower files (names inside the folder only:
    # no config may lead out of it) and loads for inference.
    import torch

    from llavarad_cli.model.loading import load_model

    weights = out / "checkpoint-4" / "weights"
    native = json.loads((weights / "llavarad.json").read_text())
    assert native["vision_tower"]["config"] == "vision_tower.json"
    assert native["vision_tower"]["weights"] == "vision_tower.safetensors"
    # The final save found the run folder's copy unchanged and kept it, so the links still are links.
    assert all((weights / name).samefile(out / name) for name in ("vision_tower.json", "vision_tower.safetensors"))
    model, _ = load_model(str(weights), device="cpu")
    tower = _tensors(out / "vision_tower.safetensors")
    assert all(torch.equal(v, tower[f"visual.trunk.{k}"]) for k, v in model.vision_tower.trunk.state_dict().items())
    assert _same({k: v.contiguous() for k, v in model.projector.state_dict().items()},
                 _tensors(out / "projector.safetensors"))
    # Resuming never runs code from a checkpoint file: a pickle planted in the newest one is refused by name.
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    planted = out / "checkpoint-4" / "deepspeed" / "mp_rank_00_model_states.pt"
    torch.save({**torch.load(planted, weights_only=True), "extra": Planted()}, planted)
    from llavarad_cli.errors import UserError

    with pytest.raises(UserError, match="refusing to unpickle") as refused:
        _run_in_process(spec)
    assert str(planted) in refused.value.one_line() and "--trust-pickle" in refused.value.one_line()
    assert not marker.exists()


def test_a_loss_that_becomes_nan_stops_the_run_before_any_nan_weights_are_written(tmp_path, assets, monkeypatch):
    from llavarad_cli import specs
    from llavarad_cli.errors import UserError

    # A finite but absurd learning rate: step 1 moves the weights to ~1e30, step 2's loss overflows to NaN.
    spec_path = ts.write_spec(tmp_path / "run.yaml", "finetune", assets, tmp_path / "out",
                              train={"global_batch_size": 4, "per_device_batch_size": 4, "epochs": 4,
                                     "learning_rate": 1e30},
                              output={"save_steps": 1, "save_total_limit": 4})
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match=r"the training loss became nan at step 2 .*no weights written") as stopped:
        _run_in_process(specs.load_spec(spec_path, "finetune"))
    assert "checkpoint-1" in stopped.value.one_line() and "learning_rate" in stopped.value.one_line()
    out = tmp_path / "out"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"] and not (out / "llavarad.json").exists()
    import torch

    weights = _tensors(out / "checkpoint-1" / "weights" / "projector.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())

    def strict(constant):
        raise ValueError(f"{constant} is not JSON")

    rows = [json.loads(line, parse_constant=strict) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
