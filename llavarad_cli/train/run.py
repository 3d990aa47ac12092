"""What ``llavarad pretrain|finetune`` does in the parent process: plan the run, show it, or launch it."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llavarad_cli.errors import UserError
from llavarad_cli.specs import RunSpec
from llavarad_cli.train import launcher

RESOLVED_SPEC, DS_CONFIG = launcher.RESOLVED_SPEC, launcher.DS_CONFIG


@dataclass
class RunPlan:
    spec: RunSpec
    topology: launcher.Topology
    ds_config: dict
    command: list[str]
    env: dict[str, str]

    @property
    def out(self) -> Path:
        return Path(self.spec.output.dir)


def plan_run(spec: RunSpec, num_workers: int | None, merge: bool = False, gpu_count: int | None = None,
             trust_pickle: bool = False) -> RunPlan:
    check_stage(spec)
    topo = launcher.topology(spec, num_workers, gpu_count)
    ds_config = launcher.deepspeed_config(spec, topo.world_size)
    spec_path = Path(spec.output.dir) / RESOLVED_SPEC
    cmd = launcher.launcher_command(spec, topo, spec_path, merge, trust_pickle)
    return RunPlan(spec, topo, ds_config, cmd, launcher.worker_env(topo))


def check_stage(spec: RunSpec) -> None:
    """Mistakes that validate as a spec but make no sense for the stage."""
    if spec.stage == "pretrain" and spec.lora.enabled:
        raise UserError("pretrain trains the projector only; lora.enabled must be false",
                        hint="LoRA belongs to `llavarad finetune`")
    if spec.stage == "finetune" and not spec.lora.enabled:
        # Full fine-tuning of the LM is not this recipe; refuse rather than silently train the projector only.
        raise UserError("finetune trains LoRA adapters and the projector; lora.enabled must be true")


def show_plan(plan: RunPlan, console: Console) -> None:
    """The dry run's account: DeepSpeed config, launcher command, per-GPU memory estimate."""
    from llavarad_cli.train.memory import estimate

    topo = plan.topology
    kind = "CPU worker" if topo.cpu else "GPU"
    console.rule("[bold]DeepSpeed config[/] (a run writes it to " + str(plan.out / DS_CONFIG) + ")")
    console.print_json(json.dumps(plan.ds_config))
    console.rule("[bold]launcher[/]")
    console.print(f"{topo.world_size} {kind}s ({topo.nodes} node(s) x {topo.per_node}); "
                  f"gradient accumulation {plan.ds_config['gradient_accumulation_steps']}", highlight=False)
    console.print(shlex.join(plan.command), soft_wrap=True, highlight=False)
    est = estimate(plan.spec, topo.world_size)
    table = Table(title=f"memory estimate per {kind}", show_header=True)
    table.add_column("item")
    table.add_column("GiB", justify="right")
    for item, gib in est.rows:
        table.add_row(item, f"{gib:.2f}")
    if est.rows:
        table.add_row("[bold]total[/]", f"[bold]{est.total:.2f}[/]")
    console.print(table)
    for note in est.notes:
        console.print(f"note: {note}", highlight=False)


def check_records(spec: RunSpec) -> int:
    """Fail fast in the parent on an unusable records file (the workers would all fail the same way)."""
    from llavarad_cli.train.dataset import load_records

    return len(load_records(spec.data.train_records))


def write_run_files(plan: RunPlan) -> Path:
    """The run folder with the resolved spec and the DeepSpeed config, which every worker reads."""
    from llavarad_cli.io_utils import atomic_write_json
    from llavarad_cli.specs import write_resolved_spec

    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_spec(plan.spec, out)
    atomic_write_json(out / DS_CONFIG, plan.ds_config)
    return out


def launch(plan: RunPlan, console: Console) -> dict:
    """Write the resolved spec and DeepSpeed config, run the workers, return the run summary."""
    from llavarad_cli.io_utils import read_json

    n = check_records(plan.spec)
    if n < plan.spec.train.global_batch_size:
        raise UserError(f"{plan.spec.data.train_records}: {n} records, fewer than one global batch "
                        f"({plan.spec.train.global_batch_size})", hint="lower train.global_batch_size")
    if plan.spec.stage == "finetune" and plan.spec.model.pretrained_projector is None:
        console.print("[yellow]warning:[/] model.pretrained_projector is not set: stage 2 starts from a freshly "
                      "initialised projector, not a stage-1 one", highlight=False)
    out = write_run_files(plan)
    topo = plan.topology
    console.print(f"{plan.spec.stage}: {n} records, {topo.world_size} "
                  f"{'CPU worker' if topo.cpu else 'GPU'}(s) -> {out}", highlight=False)
    launcher.run_launcher(plan.command, plan.env, out, topo.world_size)
    return read_json(out / "train_summary.json")
