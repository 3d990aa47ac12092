"""One training rank, started by DeepSpeed's launcher: build model, build data, loop, save.

    python -m llavarad_cli.train.worker --spec OUT/resolved_spec.yaml [--merge]

Any failure is written to ``OUT/.errors/rank<r>.json`` (rank, one-line message, traceback file) so that the
parent ``llavarad pretrain|finetune`` can report it; the exit code is non-zero.
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
from pathlib import Path

from llavarad_cli import skips
from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_json, atomic_write_text

#: Test hook: ``RANK:STEP`` makes that rank SIGKILL itself right after finishing optimizer step STEP.
KILL_ENV = "LLAVARAD_DEBUG_KILL_AFTER_STEP"
SKIP_REASONS = skips.TRAINING


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init_distributed(cpu: bool) -> None:
    import deepspeed
    import torch

    if os.environ.get("LLAVARAD_DS_NO_SHM") == "1":
        # DeepSpeed 0.19's CPU backend JIT-compiles a shared-memory all-reduce op (~65 s) on first use; gloo
        # works without it. A private hook, hence opt-in.
        import importlib

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")


class Trainer:
    """The state of one rank's run; ``run()`` reads top to bottom."""

    def __init__(self, spec, merge: bool = False):
        import torch

        self.spec = spec
        self.merge = merge
        self.out = Path(spec.output.dir)
        self.cpu = not torch.cuda.is_available()
        self.rank = _rank()

    # --- building -----------------------------------------------------------------------------------------------

    def run(self) -> dict:
        import deepspeed
        import torch
        import torch.distributed as dist

        from llavarad_cli.train import checkpoint, launcher
        from llavarad_cli.model.loading import pad_token_id
        from llavarad_cli.train.build import build_training_model, parameter_groups
        from llavarad_cli.train.dataset import EpochPlan, TrainingRecords, load_records
        from llavarad_cli.train.samples import text_budget

        spec = self.spec
        init_distributed(self.cpu)
        self.world = dist.get_world_size()
        torch.manual_seed(spec.train.seed)
        if self.rank == 0:
            checkpoint.remove_partial(self.out)

        model, tokenizer = build_training_model(spec)
        self.model, self.tokenizer = model, tokenizer
        budget = text_budget(spec.data.model_max_length, getattr(model.lm.config, "max_position_embeddings", None),
                             model.num_image_tokens)
        records = load_records(spec.data.train_records)
        dataset = TrainingRecords(records, spec.data.image_folder, tokenizer, spec.data.template, budget,
                                  model.image_transform)
        ds_config = launcher.deepspeed_config(spec, self.world)
        gas = ds_config["gradient_accumulation_steps"]
        plan = EpochPlan(len(records), spec.train.seed, self.world, self.rank, spec.train.per_device_batch_size, gas)
        total = plan.total_steps(spec.train.epochs, spec.train.max_steps)

        t = spec.train
        optimizer = torch.optim.AdamW(parameter_groups(model, spec), lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                      eps=t.adam_epsilon, weight_decay=t.weight_decay)
        from transformers import get_scheduler

        scheduler = get_scheduler(t.lr_scheduler if t.lr_scheduler != "constant" else "constant_with_warmup",
                                  optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * total),
                                  num_training_steps=total)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
        self.engine = engine

        start, base_counts = 0, {}
        latest = checkpoint.latest_checkpoint(self.out)
        if latest is not None:
            state = checkpoint.load(engine, latest, self.rank, self.world)
            start = int(state["global_step"])
            base_counts = state.get("skipped", {}) if self.rank == 0 else {}
            self.say(f"resumed from {latest.name} (step {start} of {total})")
            changed = changed_settings(state.get("spec", {}), spec)
            if changed:
                self.say(f"[yellow]warning:[/] the spec changed since {latest.name}: {', '.join(changed)}")
        self.counts = torch.zeros(len(SKIP_REASONS) + 1, dtype=torch.float64)
        for i, reason in enumerate(SKIP_REASONS + (skips.Skip.TRUNCATED,)):
            self.counts[i] = float(base_counts.get(reason, 0))

        self.loop(dataset, plan, start, total, pad_token_id(tokenizer))
        return self.finish(total)

    # --- the loop -----------------------------------------------------------------------------------------------

    def loop(self, dataset, plan, start: int, total: int, pad_id: int) -> None:
        import torch

        from llavarad_cli.train.dataset import count_positions, make_loader
        from llavarad_cli.train.metrics import MetricsLog
        from llavarad_cli.train.progress import TrainProgress

        spec, engine = self.spec, self.engine
        kill = _kill_request(self.rank)
        log = MetricsLog(self.out / "metrics.jsonl", start, spec.output.report_to, self.out.name,
                         {"spec": json.loads(json.dumps(spec.model_dump(mode="json")))}) if self.rank == 0 else None
        for warning in (log.warnings if log else []):
            self.say(f"[yellow]warning:[/] {warning}")
        loader = make_loader(dataset, plan, start, total, spec.data.num_workers, pad_id, spec.train.seed)
        progress = TrainProgress(total, start, enabled=self.rank == 0)
        step, micro, window_loss, window_n, window_tokens = start, 0, 0.0, 0, 0
        window_start = time.perf_counter()
        skipped_file = self.out / "logs" / f"skipped-rank{self.rank}.jsonl"
        skipped_file.parent.mkdir(parents=True, exist_ok=True)
        device = engine.device
        dtype = next(p for p in engine.module.projector.parameters()).dtype
        engine.train()  # LoRA dropout on; the vision tower stays in eval mode by its own rule
        with progress, open(skipped_file, "a", encoding="utf-8") as skipped_fh:
            for batch in loader:
                self._count_skips(batch, skipped_fh)
                if "input_ids" in batch:
                    out = engine(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                                 labels=batch["labels"].to(device),
                                 pixel_values=batch["pixel_values"].to(device=device, dtype=dtype))
                    loss = out.loss
                    window_loss += float(loss.detach())
                    window_n += 1
                    window_tokens += count_positions(batch, self.model.num_image_tokens)
                else:
                    # Every image in this micro-batch was unusable: a zero loss over the trainable weights keeps
                    # ZeRO's gradient hooks in step with the other ranks.
                    loss = sum((p * 0).sum() for p in engine.module.parameters() if p.requires_grad)
                engine.backward(loss)
                engine.step()
                micro += 1
                if micro % engine.gradient_accumulation_steps():
                    continue
                step += 1
                if step % spec.output.logging_steps == 0 or step == total:
                    row = self._log_row(step, plan, window_loss, window_n, window_tokens, window_start)
                    window_loss, window_n, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
                    if log:
                        log.log(row)
                    progress.update(step, row)
                else:
                    progress.update(step, None)
                if step % spec.output.save_steps == 0 or step == total:
                    self.save(step, plan)
                if kill and step == kill:
                    os.kill(os.getpid(), signal.SIGKILL)
        if log:
            log.close()

    def _count_skips(self, batch: dict, fh) -> None:
        for item in batch["skipped"]:
            self.counts[SKIP_REASONS.index(item["reason"])] += 1
            fh.write(json.dumps(item) + "\n")
        self.counts[-1] += batch["truncated"]

    def _log_row(self, step, plan, loss_sum, loss_n, tokens, since) -> dict:
        import torch
        import torch.distributed as dist

        stats = torch.tensor([loss_sum, loss_n, tokens], dtype=torch.float64)
        if not self.cpu:
            stats = stats.to(self.engine.device)
        dist.all_reduce(stats)
        loss_sum, loss_n, tokens = stats.tolist()
        elapsed = max(time.perf_counter() - since, 1e-9)
        lrs = self.engine.get_lr()
        row = {"step": step, "epoch": round(step / plan.steps_per_epoch, 4),
               "loss": loss_sum / loss_n if loss_n else float("nan"), "lr": lrs[-1] if lrs else None,
               "tokens_per_s": tokens / elapsed, "time": time.time()}
        if len(lrs) > 1:
            row["projector_lr"] = lrs[0]
        return row

    # --- saving -------------------------------------------------------------------------------------------------

    def _global_counts(self) -> dict:
        import torch.distributed as dist

        counts = self.counts.clone()
        if not self.cpu:
            counts = counts.to(self.engine.device)
        dist.all_reduce(counts)
        return {reason: int(v) for reason, v in zip(SKIP_REASONS + (skips.Skip.TRUNCATED,), counts.tolist())}

    def save(self, step: int, plan) -> None:
        import torch.distributed as dist

        from llavarad_cli.train import checkpoint
        from llavarad_cli.train.outputs import save_weights

        state = {"global_step": step, "epoch": plan.epoch_of(step), "step_in_epoch": step % plan.steps_per_epoch,
                 "samples_seen": step * plan.global_batch, "world_size": self.world,
                 "skipped": self._global_counts(), "stage": self.spec.stage,
                 "spec": self.spec.model_dump(mode="json")}
        checkpoint.save(self.engine, self.out, step, state, self.rank,
                        lambda path: save_weights(self.model, self.spec, path, reference_tower=True),
                        self.spec.output.save_total_limit,
                        dist.barrier)

    def finish(self, total: int) -> dict:
        import torch.distributed as dist

        from llavarad_cli.train.metrics import loss_curve_title, plot_loss_curve
        from llavarad_cli.train.outputs import save_final

        counts = self._global_counts()
        summary = {"stage": self.spec.stage, "steps": total, "world_size": self.world, "skipped": counts}
        if self.rank == 0:
            written = save_final(self.model, self.spec, self.out, merge=self.merge, tokenizer=self.tokenizer)
            png = plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss_curve.png",
                                  loss_curve_title(self.spec.stage, self.out))
            summary["outputs"] = [str(p) for p in written] + ([str(png)] if png else [])
            atomic_write_json(self.out / "train_summary.json", summary)
            skipped = sum(v for k, v in counts.items() if k != "truncated")
            if skipped:
                detail = ", ".join(f"{k}: {v}" for k, v in counts.items() if v and k != "truncated")
                self.say(f"[yellow]skipped {skipped} samples[/] ({detail}); ids in {self.out / 'logs'}")
            if counts["truncated"]:
                self.say(f"{counts['truncated']} samples were truncated to data.model_max_length")
            self.say(f"[green]done[/]: {self.spec.stage} wrote {self.out}")
        dist.barrier()
        return summary

    def say(self, text: str) -> None:
        if self.rank == 0:
            from rich.console import Console

            Console(highlight=False).print(text)


#: Sections whose change between a checkpoint and its resume alters what is trained.
_TRAINING_SECTIONS = ("model", "data", "train", "lora")


def changed_settings(saved: dict, spec) -> list[str]:
    """Dotted keys of training settings that differ from those the checkpoint was written with."""
    now = spec.model_dump(mode="json")
    changed = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            changed.append(prefix)

    for section in _TRAINING_SECTIONS:
        if section in saved:
            walk(saved[section], now.get(section), section)
    return changed


def _kill_request(rank: int) -> int | None:
    value = os.environ.get(KILL_ENV, "")
    if ":" in value:
        want_rank, step = value.split(":", 1)
        if int(want_rank) == rank:
            return int(step)
    return None


def report_failure(out_dir: Path, exc: BaseException) -> None:
    """Leave the parent a one-line account of this rank's failure, with the traceback beside it."""
    rank = _rank()
    errors = Path(out_dir) / ".errors"
    try:
        errors.mkdir(parents=True, exist_ok=True)
        tb_file = errors / f"rank{rank}-traceback.txt"
        atomic_write_text(tb_file, "".join(traceback.format_exception(exc)))
        user = isinstance(exc, UserError)
        message = exc.message if user else f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        atomic_write_json(errors / f"rank{rank}.json", {
            "rank": rank, "kind": "user" if user else "crash", "message": message,
            "hint": getattr(exc, "hint", None), "traceback_file": str(tb_file)})
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    from llavarad_cli import specs

    parser = argparse.ArgumentParser(prog="python -m llavarad_cli.train.worker")
    parser.add_argument("--spec", type=Path, required=True, help="resolved_spec.yaml written by the parent")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the DeepSpeed launcher")
    args = parser.parse_args(argv)
    # The parent wrote the spec into the run directory; errors go there even when the spec does not load here
    # (on another node a path the parent validated may not exist).
    out_dir = args.spec.resolve().parent
    code = 0
    try:
        data = specs.read_yaml(args.spec)
        spec = specs.build_spec(data.get("stage", "pretrain"), data, source=str(args.spec))
        out_dir = spec.output.dir
        Trainer(spec, merge=args.merge).run()
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent, then re-raised
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        report_failure(out_dir, exc)
        if not isinstance(exc, UserError):
            traceback.print_exc()
        code = 2 if isinstance(exc, UserError) else 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if code == 0:
                dist.destroy_process_group()
    if code:
        os._exit(code)  # skip atexit hooks that would wait on peers of a broken process group
    return code


if __name__ == "__main__":
    sys.exit(main())
