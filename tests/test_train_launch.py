"""The parent side of training, in-process: DeepSpeed config, topology, launcher command, failure reports,
checkpoint bookkeeping, metrics, and the `--dry-run` CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import _train_setup as ts
from llavarad_cli import specs
from llavarad_cli.cli import app
from llavarad_cli.errors import UserError
from llavarad_cli.train import checkpoint, launcher, rank_reports

runner = CliRunner()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return ts.tiny_assets(tmp_path_factory.mktemp("assets"))


def _spec(tmp_path, assets, stage="finetune", **sections):
    path = ts.write_spec(tmp_path / "run.yaml", stage, assets, tmp_path / "out", **sections)
    return path, specs.load_spec(path, stage)


def test_generated_deepspeed_config_follows_the_spec(tmp_path, assets):
    _, spec = _spec(tmp_path, assets, train={"global_batch_size": 8, "per_device_batch_size": 2,
                                             "precision": "bf16", "max_grad_norm": 1.0})
    cfg = launcher.deepspeed_config(spec, world_size=2)
    assert cfg["train_batch_size"] == 8 and cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 2 and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_allow_untested_optimizer"] is True
    with pytest.raises(UserError, match="not a multiple"):
        launcher.deepspeed_config(spec, world_size=3)


def test_user_deepspeed_json_replaces_the_generated_one_with_auto_filled(tmp_path, assets):
    # The reference's scripts/zero2.json, "auto" everywhere.
    zero2 = {"fp16": {"enabled": "auto", "loss_scale": 0}, "bf16": {"enabled": "auto"},
             "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
             "gradient_accumulation_steps": "auto",
             "zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": "auto"},
             "optimizer": {"type": "AdamW"}}
    (tmp_path / "zero2.json").write_text(json.dumps(zero2))
    _, spec = _spec(tmp_path, assets, deepspeed={"config": str(tmp_path / "zero2.json")},
                    train={"precision": "bf16"})
    cfg = launcher.deepspeed_config(spec, world_size=1)
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert cfg["gradient_accumulation_steps"] == 2 and cfg["zero_optimization"]["reduce_bucket_size"] == 5e8
    assert "optimizer" not in cfg  # the worker's AdamW (with the projector LR group) is used
    zero2["train_batch_size"] = 512
    (tmp_path / "zero2.json").write_text(json.dumps(zero2))
    with pytest.raises(UserError, match="train_batch_size is 512 but the spec gives 2"):
        launcher.deepspeed_config(spec, world_size=1)
    for text, why in (("{nope", "the DeepSpeed config is not valid JSON"), ("[1, 2]", "must be a JSON object"),
                      ("[" * 100000, "nested too deeply"), ('{"steps": ' + "9" * 5000 + "}", "more digits")):
        (tmp_path / "zero2.json").write_text(text)
        with pytest.raises(UserError, match=f"zero2.json: .*{why}"):
            launcher.deepspeed_config(spec, world_size=1)


def test_topology_and_launcher_command(tmp_path, assets):
    _, spec = _spec(tmp_path, assets, launcher={"master_port": 29999})
    topo = launcher.topology(spec, num_workers=2)
    assert topo.cpu and topo.world_size == 2
    cmd = launcher.launcher_command(spec, topo, Path("/x/resolved_spec.yaml"), merge=True)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--num_gpus") + 1] == "2" and cmd[cmd.index("--master_port") + 1] == "29999"
    assert cmd[cmd.index("--module") + 1] == "llavarad_cli.train.worker" and cmd[-1] == "--merge"
    env = launcher.worker_env(topo)
    assert env["DS_ACCELERATOR"] == "cpu" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert launcher.topology(spec, None, gpu_count=0).cpu  # no GPU: one CPU worker
    gpu = launcher.topology(spec, None, gpu_count=4)
    assert not gpu.cpu and gpu.world_size == 4
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=8\nnode-b slots=8\n")
    _, multi = _spec(tmp_path, assets, launcher={"hostfile": str(hostfile), "num_nodes": 2})
    topo = launcher.topology(multi, None)
    assert topo.world_size == 16 and topo.nodes == 2
    cmd = launcher.launcher_command(multi, topo, Path("/x/s.yaml"))
    assert cmd[cmd.index("--hostfile") + 1] == str(hostfile) and cmd[cmd.index("--num_nodes") + 1] == "2"
    hostfile.write_text("node-a eight\n")
    with pytest.raises(UserError, match="slots=N"):
        launcher.parse_hostfile(hostfile)


def test_launcher_keeps_the_gpus_cuda_visible_devices_gives(tmp_path, assets, monkeypatch):
    # DeepSpeed's runner ignores CUDA_VISIBLE_DEVICES when given --num_gpus: it must get --include instead.
    _, spec = _spec(tmp_path, assets, launcher={"num_gpus": 2})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    topo = launcher.topology(spec, None, gpu_count=4)
    cmd = launcher.launcher_command(spec, topo, Path("/x/s.yaml"))
    assert cmd[cmd.index("--include") + 1] == "localhost:4,5" and "--num_gpus" not in cmd
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1f2e,GPU-3a4b")  # UUIDs: DeepSpeed cannot --include them
    assert "--num_gpus" in launcher.launcher_command(spec, topo, Path("/x/s.yaml"))
    cpu = launcher.topology(spec, num_workers=2)
    assert "--num_gpus" in launcher.launcher_command(spec, cpu, Path("/x/s.yaml"))


def test_a_worker_that_fails_even_before_its_spec_loads_is_reported_with_rank_and_error(tmp_path, assets,
                                                                                          monkeypatch):
    from llavarad_cli.train import worker

    path, spec = _spec(tmp_path, assets)
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    resolved = specs.write_resolved_spec(spec, run_dir)
    # On another node the records path the parent checked is missing: the worker's spec does not validate.
    text = resolved.read_text().replace(str(assets["records"]), "/nowhere/train.json")
    resolved.write_text(text)
    codes = []
    monkeypatch.setattr(worker.os, "_exit", lambda code: codes.append(code))
    monkeypatch.setenv("RANK", "3")
    worker.main(["--spec", str(resolved)])
    assert codes == [2]
    line = launcher.failure(run_dir, 2, world_size=4).one_line()
    assert "worker rank 3" in line and "/nowhere/train.json" in line and "file not found" in line
    # A crash (a bug, not a user mistake) names the rank, the error and where the traceback is.
    try:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except RuntimeError as exc:
        rank_reports.report_failure(run_dir, exc)
    crash = launcher.failure(run_dir, 1, world_size=4)
    assert crash.exit_code == 1 and "rank 3 failed: RuntimeError: CUDA out of memory" in crash.one_line()
    assert (run_dir / ".errors" / "rank3-traceback.txt").read_text().startswith("Traceback")


def test_the_worker_runs_the_deepspeed_config_the_parent_wrote(tmp_path, assets, monkeypatch):
    from llavarad_cli.train import worker
    from llavarad_cli.train.run import DS_CONFIG, RESOLVED_SPEC, plan_run, write_run_files

    _, spec = _spec(tmp_path, assets)
    out = write_run_files(plan_run(spec, num_workers=1))
    written = json.loads((out / DS_CONFIG).read_text())
    written["gradient_clipping"] = 0.25  # a value the spec does not give: only the file has it
    (out / DS_CONFIG).write_text(json.dumps(written))
    seen = []
    monkeypatch.setattr(worker, "run", lambda spec, ds_config, **options: seen.append(ds_config))
    assert worker.main(["--spec", str(out / RESOLVED_SPEC)]) == 0
    assert seen == [written]
    # The batch shape comes from that file too, checked against the ranks that really started.
    assert worker._batch_shape(written, 1) == (1, 2)
    with pytest.raises(UserError, match="but 2 workers started"):
        worker._batch_shape(written, 2)


def test_failures_name_the_rank_and_the_error(tmp_path):
    errors = tmp_path / ".errors"
    errors.mkdir()
    (errors / "rank1.json").write_text(json.dumps({"rank": 1, "kind": "crash", "message": "RuntimeError: boom",
                                                   "traceback_file": "/t/rank1-traceback.txt"}))
    exc = launcher.failure(tmp_path, 1, world_size=2)
    # A crash is not a user mistake: code catching UserError must not swallow it.
    assert isinstance(exc, launcher.WorkerFailed) and not isinstance(exc, UserError) and exc.exit_code == 1
    assert "rank 1 failed: RuntimeError: boom" in exc.one_line() and "/t/rank1-traceback.txt" in exc.one_line()
    # A rank killed outright reports nothing; its peer only sees the broken connection.
    (errors / "rank1.json").unlink()
    (errors / "rank0.json").write_text(json.dumps({"rank": 0, "kind": "crash",
                                                   "message": "RuntimeError: Connection reset by peer"}))
    assert "rank 1 was killed without reporting" in launcher.failure(tmp_path, 1, world_size=2).one_line()
    (errors / "rank0.json").unlink()
    assert "killed by SIGKILL" in launcher.failure(tmp_path, -9, world_size=2).one_line()
    (errors / "rank0.json").write_text(json.dumps({"rank": 0, "kind": "user", "message": "bad records",
                                                   "hint": "fix it"}))
    user = launcher.failure(tmp_path, 2, world_size=2)
    assert type(user) is UserError and user.exit_code == 2 and "rank 0: bad records" in user.one_line()


def _records(folder: Path, *records: dict) -> None:
    errors = folder / ".errors"
    shutil.rmtree(errors, ignore_errors=True)
    errors.mkdir(parents=True)
    for record in records:
        (errors / f"rank{record['rank']}.json").write_text(json.dumps(record))


KILLED = 256 - 9  # DeepSpeed's launcher exits with the failed rank's -9, which the shell shows as 247
PEER_LOST = {"kind": "crash", "message": "RuntimeError: [gloo] Connection closed by peer", "time": 2.0}
STOPPED = {"kind": "stopped", "message": "stopped by SIGTERM", "time": 2.0}


@pytest.mark.parametrize("records, returncode, expected", [
    # rank 1 SIGKILLed (writes nothing); rank 0 saw its connection break, or was stopped by the launcher first,
    # or was itself killed by the launcher before it could write anything: rank 1 is named every time.
    ([dict(PEER_LOST, rank=0)], 1, "worker rank 1 was killed without reporting an error"),
    ([dict(STOPPED, rank=0)], KILLED, "worker rank 1 was killed by SIGKILL without reporting an error"),
    ([dict(STOPPED, rank=0), dict(PEER_LOST, rank=2)], KILLED, "worker rank 1 was killed by SIGKILL"),
    # A real error is the cause whatever the order the others followed in, and whichever rank it was.
    ([dict(PEER_LOST, rank=0, time=1.0), {"rank": 1, "kind": "crash", "message": "RuntimeError: CUDA out of memory",
                                          "time": 1.5}], 1, "worker rank 1 failed: RuntimeError: CUDA out of memory"),
    ([{"rank": 0, "kind": "crash", "message": "ValueError: bad", "time": 3.0}, dict(STOPPED, rank=1, time=1.0)], 1,
     "worker rank 0 failed: ValueError: bad"),
    # Two real errors: the one written first.
    ([{"rank": 0, "kind": "crash", "message": "ValueError: later", "time": 3.0},
      {"rank": 1, "kind": "crash", "message": "ValueError: first", "time": 1.0}], 1, "worker rank 1 failed: ValueError: first"),
    # A scheduler stopped them all.
    ([dict(STOPPED, rank=0), dict(STOPPED, rank=1)], 143, "every training worker was stopped by SIGTERM"),
])
def test_the_failed_rank_is_named_whatever_order_the_ranks_died_in(tmp_path, records, returncode, expected):
    _records(tmp_path, *records)
    exc = launcher.failure(tmp_path, returncode, world_size=2 if len(records) < 3 else 3)
    assert isinstance(exc, launcher.WorkerFailed) and expected in exc.one_line()


def test_a_rank_stopped_by_sigterm_leaves_a_stopped_record_and_no_traceback(tmp_path):
    import signal
    import subprocess
    import sys

    ready = tmp_path / "ready"
    code = ("import os, sys, time; from pathlib import Path; os.environ['RANK'] = '1';"
            "from llavarad_cli.train import rank_reports; rank_reports.stop_quietly_on_sigterm(Path(sys.argv[1]));"
            "Path(sys.argv[2]).write_text('ok'); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(ready)], stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 128 + signal.SIGTERM and proc.stderr.read() == ""
    finally:
        proc.kill()
    record = json.loads((tmp_path / ".errors" / "rank1.json").read_text())
    assert record["kind"] == "stopped" and record["message"] == "stopped by SIGTERM"


def test_ctrl_c_stops_the_launcher_and_its_children(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import threading

    import psutil

    # The interrupt reaches only this process (as `kill -INT <pid>` does): the launcher stand-in and its child
    # never see it, so run_launcher must stop them itself, then say so in one line (exit 130).
    ready = tmp_path / "ready"
    code = ("import subprocess, sys, time; from pathlib import Path;"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
            "Path(sys.argv[1]).write_text(str(child.pid)); time.sleep(600)")
    main = threading.get_ident()

    def interrupt():
        while not ready.exists() or not ready.read_text():
            pass
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    spawned = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(launcher.subprocess, "Popen", lambda *a, **k: spawned.append(real_popen(*a, **k)) or spawned[-1])
    from llavarad_cli.errors import Interrupted

    with pytest.raises(Interrupted):
        launcher.run_launcher([sys.executable, "-c", code, str(ready)], dict(os.environ), tmp_path, 1, grace_s=0.2)
    assert spawned[0].returncode is not None  # the stand-in was stopped and reaped
    grandchild = int(ready.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_a_pickle_planted_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    planted = tmp_path / "checkpoint-4" / "deepspeed" / "mp_rank_00_model_states.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"module": {}, "extra": Planted()}, planted)
    with pytest.raises(UserError) as refused:
        checkpoint.read_checkpoint_file(planted, "cpu")
    line = refused.value.one_line()
    assert str(planted) in line and "refusing to unpickle" in line and "--trust-pickle" in line
    assert not marker.exists()
    # The file really is live: with the user's explicit trust it runs (which is what the refusal prevents).
    checkpoint.read_checkpoint_file(planted, "cpu", trust_pickle=True)
    assert marker.read_text() == "ran"
    # Tensors, plain data and DeepSpeed's own state classes load.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    plain = tmp_path / "optim.pt"
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients, "t": torch.ones(2)}, plain)
    loaded = checkpoint.read_checkpoint_file(plain, "cpu")
    assert loaded["zero_stage"] == ZeroStageEnum.gradients and loaded["loss_scaler"].cur_scale == 1.0
    # A truncated file is one line too.
    plain.write_bytes(plain.read_bytes()[:40])
    with pytest.raises(UserError, match="not a readable checkpoint file"):
        checkpoint.read_checkpoint_file(plain, "cpu")


def test_training_commands_take_trust_pickle_and_pass_it_to_the_workers(tmp_path, assets):
    _, spec = _spec(tmp_path, assets)
    topo = launcher.topology(spec, num_workers=1)
    assert "--trust-pickle" in launcher.launcher_command(spec, topo, Path("/x/s.yaml"), trust_pickle=True)
    assert "--trust-pickle" not in launcher.launcher_command(spec, topo, Path("/x/s.yaml"))
    for stage in ("pretrain", "finetune"):
        assert "--trust-pickle" in runner.invoke(app, [stage, "--help"]).output


def test_metrics_lines_stay_json_when_a_value_is_not_finite(tmp_path):
    from llavarad_cli.train.metrics import MetricsLog, plot_loss_curve, read_metrics
    from llavarad_cli.train.progress import format_row

    log = MetricsLog(tmp_path / "metrics.jsonl", 0, [], "run", {})
    log.log({"step": 1, "loss": 2.0, "lr": 1e-3, "tokens_per_s": 10.0})
    log.log({"step": 2, "loss": None, "lr": 1e-3, "tokens_per_s": 0.0})  # every sample of the step skipped
    log.log({"step": 3, "loss": float("nan"), "lr": float("inf"), "tokens_per_s": 0.0})
    log.close()

    def strict(constant):
        raise ValueError(f"{constant} is not JSON")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=strict) for line in lines]
    assert [r["loss"] for r in rows] == [2.0, None, None] and rows[2]["lr"] is None
    assert format_row(rows[1]).startswith("loss -")
    assert plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "loss.png", "t").is_file()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 3


def test_only_complete_checkpoints_are_resumed_and_rotation_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoint.MARKER).write_text("ok")
    (tmp_path / "checkpoint-8").mkdir()                 # a save killed before its marker
    (tmp_path / ".checkpoint-10.tmp").mkdir()           # a save killed before its rename
    assert checkpoint.latest_checkpoint(tmp_path).name == "checkpoint-6"
    removed = checkpoint.remove_partial(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint-10.tmp", "checkpoint-8"]
    checkpoint.rotate(tmp_path, keep=2)
    assert [p.name for _, p in checkpoint.complete_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np
    import torch

    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_metrics_log_drops_lines_past_the_resume_step_and_plots(tmp_path):
    from llavarad_cli.train.metrics import MetricsLog, plot_loss_curve, read_metrics

    log = MetricsLog(tmp_path / "metrics.jsonl", 0, [], "run", {})
    for step in range(1, 6):
        log.log({"step": step, "loss": 5.0 - step * 0.5, "lr": 1e-3})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "lo')  # a line cut by a kill
    MetricsLog(tmp_path / "metrics.jsonl", 3, [], "run", {}).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    png = plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "loss.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_prints_config_command_and_memory_estimate(tmp_path, assets):
    path, _ = _spec(tmp_path, assets)
    result = runner.invoke(app, ["finetune", str(path), "--dry-run", "--num-workers", "2",
                                 "--set", "train.per_device_batch_size=1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert '"train_micro_batch_size_per_gpu": 1' in out and '"gradient_accumulation_steps": 1' in out
    assert "deepspeed.launcher.runner --num_gpus 2" in out and "llavarad_cli.train.worker" in out
    assert "memory estimate per CPU worker" in out and "LoRA" in out and "total" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_stage_mistakes_are_one_line_errors(tmp_path, assets):
    path, _ = _spec(tmp_path, assets, stage="pretrain")
    result = runner.invoke(app, ["pretrain", str(path), "--dry-run", "--set", "lora.enabled=true"])
    assert result.exit_code == 2 and "lora.enabled must be false" in result.output
    result = runner.invoke(app, ["pretrain", str(path), "--num-workers", "3", "--dry-run"])
    assert result.exit_code == 2 and "not a multiple" in result.output
    path, _ = _spec(tmp_path, assets, stage="finetune")
    result = runner.invoke(app, ["finetune", str(path), "--dry-run",
                                 "--set", "model.pretrained_projector=/nope.safetensors"])
    assert result.exit_code == 2 and "file not found" in result.output


def test_lora_never_reaches_projector_tower_or_lm_head_and_projector_lr_is_its_own(tmp_path, assets):
    from llavarad_cli.train.build import build_training_model, parameter_groups

    _, spec = _spec(tmp_path, assets, train={"projector_learning_rate": 2e-3, "learning_rate": 1e-4})
    model, tokenizer = build_training_model(spec)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"projector", "lm"}
    lora_layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if "lora_" in n}
    assert lora_layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in n for n in trainable)
    groups = {g["name"]: g for g in parameter_groups(model, spec)}
    assert groups["projector"]["lr"] == 2e-3 and groups["lora"]["lr"] == 1e-4
    assert tokenizer.padding_side == "right"
    # Seeded: the same spec builds the same projector and LoRA initialisation (the reference's were not).
    again, _ = build_training_model(spec)
    import torch

    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(model.named_parameters(), again.named_parameters()))


def test_stage1_projector_loads_from_the_reference_file_and_a_wrong_one_is_refused(tmp_path, assets):
    import torch

    from llavarad_cli.train.build import build_training_model

    _, spec = _spec(tmp_path, assets, stage="pretrain")
    model, _ = build_training_model(spec)
    legacy = {f"model.mm_projector.{k}": v + 1 for k, v in model.projector.state_dict().items()}
    torch.save(legacy, tmp_path / "mm_projector.bin")
    _, ft = _spec(tmp_path, assets, model={"pretrained_projector": str(tmp_path / "mm_projector.bin")})
    loaded, _ = build_training_model(ft)
    assert all(torch.equal(loaded.projector.state_dict()[k], legacy[f"model.mm_projector.{k}"]) for k in
               loaded.projector.state_dict())
    _, wrong = _spec(tmp_path, assets, model={"pretrained_projector": str(tmp_path / "mm_projector.bin"),
                                              "projector_type": "linear"})
    with pytest.raises(UserError, match="projector"):
        build_training_model(wrong)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_example_specs_are_complete_and_hold_the_paper_recipe(tmp_path, assets, stage):
    root = Path(__file__).resolve().parents[1]
    data = specs.read_yaml(root / "examples" / f"{stage}.yaml")
    from llavarad_cli.spec_template import stage_defaults

    defaults = stage_defaults(stage)
    assert set(data) == set(defaults)
    for section in ("train", "lora", "deepspeed", "launcher", "output"):
        assert set(data[section]) == set(defaults[section]), section
    (tmp_path / "p.safetensors").write_bytes(b"")
    paths = [f"data.train_records={assets['records']}", f"data.image_folder={assets['images']}"]
    if stage == "finetune":
        paths.append(f"model.pretrained_projector={tmp_path / 'p.safetensors'}")
    spec = specs.build_spec(stage, data, paths)
    recipe = {"pretrain": (1e-3, 1, 256, "plain", False), "finetune": (1e-4, 3, 64, "v1", True)}[stage]
    assert (spec.train.learning_rate, spec.train.epochs, spec.train.global_batch_size, spec.data.template,
            spec.lora.enabled) == recipe
    assert spec.train.lr_scheduler == "cosine" and spec.train.warmup_ratio == 0.03 and spec.train.weight_decay == 0
    assert spec.deepspeed.zero_stage == 2 and spec.train.precision == "bf16"
    if stage == "finetune":
        assert (spec.lora.r, spec.lora.alpha, spec.lora.dropout, spec.lora.target_modules) == (64, 128, 0.05,
                                                                                             "all-linear")


def test_a_changed_spec_is_named_on_resume(tmp_path, assets):
    from llavarad_cli.train.checkpoint import changed_settings

    _, spec = _spec(tmp_path, assets)
    saved = spec.model_dump(mode="json")
    assert changed_settings(saved, spec) == []
    _, other = _spec(tmp_path, assets, train={"learning_rate": 0.5}, output={"logging_steps": 7})
    assert changed_settings(saved, other) == ["train.learning_rate"]


def test_memory_estimate_offline_uses_the_published_vicuna_shape(tmp_path, monkeypatch):
    from llavarad_cli import specs
    from llavarad_cli.train import memory

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached
    records = tmp_path / "train.json"
    records.write_text("[]")
    spec = specs.build_spec("finetune", {"data": {"train_records": str(records), "image_folder": str(tmp_path)},
                                         "output": {"dir": str(tmp_path / "run")}})
    est = memory.estimate(spec, world_size=4)
    rows = dict(est.rows)
    assert "LM weights, frozen (6.74 B params)" in rows
    assert "trainable weights (19.93 M projector + 159.91 M LoRA)" in rows
    assert any("published shape assumed" in note for note in est.notes)


def test_tower_checkpoint_left_null_is_taken_from_released_from_never_a_random_tower(tmp_path, assets):
    from llavarad_cli.model.released import RELEASED_TOWER_CHECKPOINT
    from llavarad_cli.train.build import tower_files

    released = tmp_path / "released"
    released.mkdir()
    (released / RELEASED_TOWER_CHECKPOINT).write_bytes(Path(assets["tower_checkpoint"]).read_bytes())
    _, spec = _spec(tmp_path, assets, model={"vision_tower": {"config": str(assets["tower_config"]),
                                                              "released_from": str(released)}})
    config, ckpt = tower_files(spec)
    assert config == Path(assets["tower_config"]).resolve() and ckpt == released / RELEASED_TOWER_CHECKPOINT
    _, spec = _spec(tmp_path, assets, model={"vision_tower": {"config": str(assets["tower_config"]),
                                                              "released_from": str(tmp_path / "nowhere")}})
    with pytest.raises(UserError, match="vision tower checkpoint"):
        tower_files(spec)
