"""One training rank, started by DeepSpeed's launcher, as a linear recipe: set up, train, clean up.

    python -m llavarad_cli.train.worker --spec OUT/resolved_spec.yaml [--merge] [--trust-pickle]

The parent wrote ``resolved_spec.yaml`` and ``deepspeed_config.json`` side by side in the run folder; the
worker runs exactly that spec and that DeepSpeed config (it never derives its own). Any failure is written to
``OUT/.errors/rank<r>.json`` (rank, kind, one-line message, traceback file, time) so that the parent
``llavarad pretrain|finetune`` can report it; the exit code is non-zero. A rank stopped by SIGTERM or Ctrl-C
(DeepSpeed's launcher stops every rank once one has failed) writes a record of kind ``stopped``, so that the
parent can tell the rank that failed first from those stopped after it; a rank killed outright writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavarad_cli import skips
from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_json
from llavarad_cli.train import debug_hooks, rank_reports

#: Not a skip: samples kept with their text cut at model_max_length, counted beside the skips.
TRUNCATED = skips.Skip.TRUNCATED


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class SkipTally:
    """This rank's counts of skipped samples (by reason) and of truncated ones, summed over ranks on demand."""

    def __init__(self, base: dict | None = None):
        import torch

        # A checkpoint written by 0.1.0 spells the reasons in kebab-case ("missing-image"): read those too, so
        # that resuming such a run goes on counting from where it was.
        base = {name.replace("-", "_"): count for name, count in (base or {}).items()}
        # One int64 slot per reason of skips.TRAINING, in that order (the order the counts travel between ranks).
        self.counts = torch.tensor([int(base.get(r, 0)) for r in skips.TRAINING], dtype=torch.int64)
        self.truncated = torch.tensor([int(base.get(TRUNCATED, 0))], dtype=torch.int64)

    def add(self, batch: dict, fh) -> None:
        for item in batch["skipped"]:
            self.counts[skips.TRAINING.index(item["reason"])] += 1
            fh.write(json.dumps(item) + "\n")
        self.truncated += int(batch["truncated"])

    def all_ranks(self, device) -> dict[str, int]:
        """{reason: count, ..., "truncated": count} over every rank (a collective: all ranks must call it)."""
        import torch
        import torch.distributed as dist

        both = torch.cat([self.counts, self.truncated]).to(device)
        dist.all_reduce(both)
        values = both.tolist()
        return {**dict(zip(skips.TRAINING, values[:-1])), TRUNCATED: values[-1]}


@dataclass
class RunState:
    """What set-up builds for one rank; the training loop and clean-up read it and nothing else."""

    spec: Any                 # the RunSpec being run
    merge: bool               # finetune --merge: also write a merged copy of the LM
    trust_pickle: bool        # --trust-pickle: weights and checkpoint files may need code to unpickle
    out: Path
    rank: int
    world: int
    cpu: bool                 # gloo CPU workers (no CUDA device)
    model: Any
    tokenizer: Any
    engine: Any               # the DeepSpeed engine around `model`
    dataset: Any              # TrainingRecords
    plan: Any                 # EpochPlan: which records each optimizer step reads on this rank
    total: int                # optimizer steps of the whole run
    start: int                # optimizer steps already done (resumed from a checkpoint)
    skips: SkipTally

    @property
    def comm_device(self):
        """Where tensors for a collective live: gloo reduces CPU tensors, NCCL CUDA ones."""
        return "cpu" if self.cpu else self.engine.device


# --- the recipe ---------------------------------------------------------------------------------------------------

def run(spec, ds_config: dict, merge: bool = False, trust_pickle: bool = False) -> dict:
    """Set up, train, clean up; return the run summary (rank 0 also writes it to ``train_summary.json``)."""
    state = set_up(spec, ds_config, merge, trust_pickle)
    train(state)
    return clean_up(state)


def set_up(spec, ds_config: dict, merge: bool = False, trust_pickle: bool = False) -> RunState:
    """Process group, model, data, optimizer and schedule, DeepSpeed engine; resume from the newest checkpoint."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from llavarad_cli.train import checkpoint
    from llavarad_cli.train.build import build_training_model
    from llavarad_cli.train.dataset import EpochPlan, TrainingRecords, load_records
    from llavarad_cli.train.samples import text_budget

    cpu = not torch.cuda.is_available()
    rank, out = _rank(), Path(spec.output.dir)
    init_distributed(cpu)
    world = dist.get_world_size()
    micro, gas = _batch_shape(ds_config, world)
    torch.manual_seed(spec.train.seed)
    if rank == 0:
        checkpoint.remove_partial(out)

    model, tokenizer = build_training_model(spec, trust_pickle=trust_pickle)
    budget = text_budget(spec.data.model_max_length, getattr(model.lm.config, "max_position_embeddings", None),
                         model.num_image_tokens)
    records = load_records(spec.data.train_records)
    dataset = TrainingRecords(records, spec.data.image_folder, tokenizer, spec.data.template, budget,
                              model.image_transform)
    plan = EpochPlan(len(records), spec.train.seed, world, rank, micro, gas)
    total = plan.total_steps(spec.train.epochs, spec.train.max_steps)
    optimizer, scheduler = _optimizer_and_schedule(model, spec, total)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    state = RunState(spec, merge, trust_pickle, out, rank, world, cpu, model, tokenizer, engine, dataset, plan,
                     total, 0, SkipTally())
    _resume(state)
    return state


def train(state: RunState) -> None:
    """The loop: micro-batches until the last optimizer step, logging, checkpointing."""
    from llavarad_cli.model.loading import pad_token_id
    from llavarad_cli.train.dataset import count_positions, make_loader
    from llavarad_cli.train.metrics import MetricsLog
    from llavarad_cli.train.progress import TrainProgress

    spec, engine, rank = state.spec, state.engine, state.rank
    kill_after = debug_hooks.kill_step(rank)
    log = MetricsLog(state.out / "metrics.jsonl", state.start, spec.output.report_to, state.out.name,
                     {"spec": json.loads(json.dumps(spec.model_dump(mode="json")))}) if rank == 0 else None
    for warning in (log.warnings if log else []):
        say(state, f"[yellow]warning:[/] {warning}")
    loader = make_loader(state.dataset, state.plan, state.start, state.total, spec.data.num_workers,
                         pad_token_id(state.tokenizer), spec.train.seed)
    progress = TrainProgress(state.total, state.start, enabled=rank == 0)
    window = _Window()
    step, micro = state.start, 0
    skipped_file = state.out / "logs" / f"skipped-rank{rank}.jsonl"
    skipped_file.parent.mkdir(parents=True, exist_ok=True)
    device = engine.device
    dtype = next(p for p in engine.module.projector.parameters()).dtype
    engine.train()  # LoRA dropout on; the vision tower stays in eval mode by its own rule
    with progress, open(skipped_file, "a", encoding="utf-8") as skipped_fh:
        for batch in loader:
            state.skips.add(batch, skipped_fh)
            if "input_ids" in batch:
                out = engine(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             labels=batch["labels"].to(device),
                             pixel_values=batch["pixel_values"].to(device=device, dtype=dtype))
                loss = out.loss
                value = float(loss.detach())
                if math.isfinite(value):
                    window.add(value, count_positions(batch, state.model.num_image_tokens))
            else:
                # Every image in this micro-batch was unusable: a zero loss over the trainable weights keeps
                # ZeRO's gradient hooks in step with the other ranks.
                loss = sum((p * 0).sum() for p in engine.module.parameters() if p.requires_grad)
                value = 0.0
            _stop_unless_finite(state, value, step + 1)
            engine.backward(loss)
            # The rates this optimizer step uses: engine.step() moves the schedule on to the next step's.
            lrs = engine.get_lr()
            engine.step()
            micro += 1
            if micro % engine.gradient_accumulation_steps():
                continue
            step += 1
            if step % spec.output.logging_steps == 0 or step == state.total:
                row = _log_row(state, step, window, lrs)
                window = _Window()
                if log:
                    log.log(row)
                progress.update(step, row)
            else:
                progress.update(step, None)
            if step % spec.output.save_steps == 0 or step == state.total:
                save_checkpoint(state, step)
            if kill_after and step == kill_after:
                debug_hooks.kill_now()
    if log:
        log.close()


def clean_up(state: RunState) -> dict:
    """Final weights (rank 0), the loss curve, ``train_summary.json``, the closing lines; leave the group."""
    import torch.distributed as dist

    from llavarad_cli.train.metrics import loss_curve_title, plot_loss_curve
    from llavarad_cli.train.outputs import save_final

    spec, out = state.spec, state.out
    _stop_unless_weights_finite(state, state.total)
    counts = state.skips.all_ranks(state.comm_device)
    summary = {"stage": spec.stage, "steps": state.total, "world_size": state.world, "skipped": counts}
    if state.rank == 0:
        written = save_final(state.model, spec, out, merge=state.merge, tokenizer=state.tokenizer)
        png = plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png", loss_curve_title(spec.stage, out))
        summary["outputs"] = [str(p) for p in written] + ([str(png)] if png else [])
        atomic_write_json(out / "train_summary.json", summary)
        skipped = {k: v for k, v in counts.items() if v and k != TRUNCATED}
        if skipped:
            detail = ", ".join(f"{k}: {v}" for k, v in skipped.items())
            say(state, f"[yellow]skipped {sum(skipped.values())} samples[/] ({detail}); ids in {out / 'logs'}")
        if counts[TRUNCATED]:
            say(state, f"{counts[TRUNCATED]} samples were truncated to data.model_max_length")
        say(state, f"[green]done[/]: {spec.stage} wrote {out}")
    dist.barrier()
    return summary


# --- set-up steps -------------------------------------------------------------------------------------------------

def init_distributed(cpu: bool) -> None:
    import deepspeed
    import torch

    debug_hooks.skip_deepspeed_shm_op()
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")


def _batch_shape(ds_config: dict, world: int) -> tuple[int, int]:
    """(micro-batch per rank, gradient accumulation) from the parent's DeepSpeed config, checked against the
    ranks that actually started (a hostfile can start a different number than the parent planned for)."""
    micro = int(ds_config["train_micro_batch_size_per_gpu"])
    gas = int(ds_config["gradient_accumulation_steps"])
    if int(ds_config["train_batch_size"]) != micro * gas * world:
        raise UserError(f"the DeepSpeed config was written for a global batch of {ds_config['train_batch_size']} "
                        f"= {micro} per rank x {gas} accumulation x workers, but {world} workers started",
                        hint="check launcher.num_gpus / the hostfile, then rerun")
    return micro, gas


def _optimizer_and_schedule(model, spec, total: int):
    """torch AdamW with the projector's own LR group, and the spec's LR schedule with its warm-up."""
    import torch
    from transformers import get_scheduler

    from llavarad_cli.train.build import parameter_groups

    t = spec.train
    optimizer = torch.optim.AdamW(parameter_groups(model, spec), lr=t.learning_rate,
                                  betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay)
    scheduler = get_scheduler(t.lr_scheduler if t.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * total), num_training_steps=total)
    return optimizer, scheduler


def _resume(state: RunState) -> None:
    """Load the newest complete checkpoint, if any: engine, optimizer, schedule, RNG, step and skip counts."""
    from llavarad_cli.train import checkpoint

    latest = checkpoint.latest_checkpoint(state.out)
    if latest is None:
        return
    saved = checkpoint.load(state.engine, latest, state.rank, state.world, state.trust_pickle)
    state.start = int(saved["global_step"])
    # The saved counts are already summed over ranks: rank 0 carries them on, the others start from zero.
    state.skips = SkipTally(saved.get("skipped", {}) if state.rank == 0 else None)
    say(state, f"resumed from {latest.name} (step {state.start} of {state.total})")
    changed = checkpoint.changed_settings(saved.get("spec", {}), state.spec)
    if changed:
        say(state, f"[yellow]warning:[/] the spec changed since {latest.name}: {', '.join(changed)}")


# --- loop steps ---------------------------------------------------------------------------------------------------

@dataclass
class _Window:
    """Loss and throughput since the last logged step (this rank)."""

    loss_sum: float = 0.0
    batches: int = 0
    tokens: int = 0
    since: float = 0.0

    def __post_init__(self):
        self.since = time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.loss_sum += loss
        self.batches += 1
        self.tokens += tokens


def _stop_unless_finite(state: RunState, loss: float, step: int) -> None:
    """Stop every rank, before the optimizer applies it, when any rank's loss is inf or NaN (a collective: the
    ranks must agree, or the healthy ones would wait for the stopped one in their next all-reduce)."""
    import torch
    import torch.distributed as dist

    bad = torch.tensor([0 if math.isfinite(loss) else 1], dtype=torch.int64).to(state.comm_device)
    dist.all_reduce(bad)
    if bad.item():
        from llavarad_cli.train import checkpoint

        latest = checkpoint.latest_checkpoint(state.out)
        resume = f"the newest checkpoint, {latest.name}, holds finite weights" if latest else "no checkpoint yet"
        raise UserError(f"the training loss became {'nan/inf' if math.isfinite(loss) else loss} at step {step} "
                        f"(on {bad.item()} of {state.world} ranks): stopped before applying it, no weights written "
                        f"from this step ({resume})",
                        hint="lower train.learning_rate (or train.max_grad_norm); with precision fp16 try bf16")


def _stop_unless_weights_finite(state: RunState, step: int) -> None:
    """Never save inf/NaN weights (a finite loss can still come with an overflowing update)."""
    import torch
    import torch.distributed as dist

    bad = [n for n, p in state.engine.module.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    flag = torch.tensor([len(bad)], dtype=torch.int64).to(state.comm_device)
    dist.all_reduce(flag)  # ranks hold the same weights; agreeing anyway keeps every rank on the same path
    if flag.item():
        raise UserError(f"the trained weights became inf/NaN by step {step} ({', '.join(bad[:3]) or 'on a peer rank'}"
                        f"{' …' if len(bad) > 3 else ''}): stopped without saving them",
                        hint="lower train.learning_rate (or train.max_grad_norm); with precision fp16 try bf16")


def _log_row(state: RunState, step: int, window: _Window, lrs: list[float]) -> dict:
    """One ``metrics.jsonl`` row: the loss and tokens/s over all ranks, the learning rates this step used."""
    import torch
    import torch.distributed as dist

    stats = torch.tensor([window.loss_sum, window.batches, window.tokens], dtype=torch.float64)
    stats = stats.to(state.comm_device)
    dist.all_reduce(stats)
    loss_sum, batches, tokens = stats.tolist()
    elapsed = max(time.perf_counter() - window.since, 1e-9)
    row = {"step": step, "epoch": round(step / state.plan.steps_per_epoch, 4),
           # null (not NaN, which is not JSON) when every sample of the window was skipped
           "loss": loss_sum / batches if batches else None, "lr": lrs[-1] if lrs else None,
           "tokens_per_s": tokens / elapsed, "time": time.time()}
    if len(lrs) > 1:
        row["projector_lr"] = lrs[0]
    return row


def save_checkpoint(state: RunState, step: int) -> None:
    """checkpoint-<step>: engine, RNG, data position and skip counts (a collective: every rank calls it)."""
    import torch.distributed as dist

    from llavarad_cli.train import checkpoint
    from llavarad_cli.train.outputs import save_weights

    _stop_unless_weights_finite(state, step)
    plan = state.plan
    trainer_state = {"global_step": step, "epoch": plan.epoch_of(step), "step_in_epoch": step % plan.steps_per_epoch,
                     "samples_seen": step * plan.global_batch, "world_size": state.world,
                     "skipped": state.skips.all_ranks(state.comm_device), "stage": state.spec.stage,
                     "spec": state.spec.model_dump(mode="json")}
    checkpoint.save(state.engine, state.out, step, trainer_state, state.rank,
                    lambda path: save_weights(state.model, state.spec, path, reference_tower=True),
                    state.spec.output.save_total_limit, dist.barrier)


def say(state: RunState, text: str) -> None:
    if state.rank == 0:
        from rich.console import Console

        Console(highlight=False).print(text)


# --- the process --------------------------------------------------------------------------------------------------

def read_run_files(spec_path: Path):
    """(spec, DeepSpeed config) as the parent wrote them into the run folder."""
    from llavarad_cli import specs
    from llavarad_cli.io_utils import read_json
    from llavarad_cli.train.launcher import DS_CONFIG

    data = specs.read_yaml(spec_path)
    spec = specs.build_spec(data.get("stage", "pretrain"), data, source=str(spec_path))
    return spec, read_json(Path(spec_path).resolve().parent / DS_CONFIG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llavarad_cli.train.worker")
    parser.add_argument("--spec", type=Path, required=True, help="resolved_spec.yaml written by the parent")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled files that need code to load")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the DeepSpeed launcher")
    args = parser.parse_args(argv)
    # The parent wrote the spec into the run directory; errors go there even when the spec does not load here
    # (on another node a path the parent validated may not exist).
    out_dir = args.spec.resolve().parent
    previous_sigterm = rank_reports.stop_quietly_on_sigterm(out_dir)
    import torch.distributed as dist

    # Only a process group this call started is left at the end (main() called in-process by tests may find one).
    group_before = dist.is_available() and dist.is_initialized()
    code = 0
    try:
        spec, ds_config = read_run_files(args.spec)
        out_dir = spec.output.dir
        run(spec, ds_config, merge=args.merge, trust_pickle=args.trust_pickle)
    except KeyboardInterrupt:
        # Ctrl-C reaches every process of the terminal: the parent says what happened, once.
        rank_reports.report_stopped(out_dir, signal.SIGINT)
        code = 130
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent, then re-raised
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        rank_reports.report_failure(out_dir, exc)
        if not isinstance(exc, UserError):
            traceback.print_exc()
        code = 2 if isinstance(exc, UserError) else 1
    finally:
        if dist.is_available() and dist.is_initialized() and not group_before:
            if code == 0:
                dist.destroy_process_group()
    if code:
        os._exit(code)  # skip atexit hooks that would wait on peers of a broken process group
    signal.signal(signal.SIGTERM, previous_sigterm)  # main() called in-process (tests) leaves no handler behind
    return code


if __name__ == "__main__":
    sys.exit(main())
