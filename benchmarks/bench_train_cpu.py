"""Benchmark training on CPU: tiny-model optimizer steps/s and the training data loader's images/s.

1. Data loader: real IU chest X-rays (tests/data/cxr-images/iu) through `TrainingRecords` (v1 sample building
   with the tiny tokenizer, image read, the released tower's 518 px open_clip eval transform) and the collator,
   with 0 DataLoader workers (baseline: everything in the training process) and with --loader-workers.
2. Steps: the stage-2 worker loop (DeepSpeed ZeRO-2 engine, world size 1, gloo) on the tiny LLaMA + tiny tower,
   LoRA r 4, fp32, per-device batch 2; steps/s over the timed steps after a warm-up.

    python benchmarks/bench_train_cpu.py [--images 48] [--loader-workers 2] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def loader_images_per_s(n_images: int, workers: int, image_size: int = 518) -> float:
    import torch
    from torch.utils.data import DataLoader

    import _train_setup as ts  # noqa: F401 - puts the test data path logic in one place
    from llavarad_cli.model.vision import eval_transform
    from llavarad_cli.prompts import conversations
    from llavarad_cli.testing import tiny_tokenizer
    from llavarad_cli.train.dataset import Collator, TrainingRecords

    images = sorted((ts.DATA / "cxr-images" / "iu").glob("*.png"))
    records = [{"id": str(i), "image": images[i % len(images)].name,
                "conversations": conversations("cough", "The heart is normal in size. The lungs are clear.")}
               for i in range(n_images)]
    ds = TrainingRecords(records, ts.DATA / "cxr-images" / "iu", tiny_tokenizer(), "v1", 2048,
                         eval_transform(image_size))
    loader = DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=Collator(0),
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    seen = sum(int(batch["pixel_values"].shape[0]) for batch in loader)
    return seen / (time.perf_counter() - start)


def steps_per_s(steps: int, warmup: int = 2) -> float:
    import _train_setup as ts
    from llavarad_cli import specs
    from llavarad_cli.train.worker import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        assets = ts.tiny_assets(tmp / "assets")
        path = ts.write_spec(tmp / "run.yaml", "finetune", assets, tmp / "out",
                             train={"global_batch_size": 2, "per_device_batch_size": 2, "max_steps": steps + warmup,
                                    "epochs": 1},
                             output={"save_steps": 10**6, "logging_steps": 1})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        Trainer(specs.load_spec(path, "finetune")).run()
        rows = [json.loads(line) for line in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows]
    timed = times[warmup:]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    os.environ.setdefault("LLAVARAD_DS_NO_SHM", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(2)
    base = loader_images_per_s(args.images, 0)
    par = loader_images_per_s(args.images, args.loader_workers)
    sps = steps_per_s(args.steps)
    print(f"\ncores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
    print(f"{'measure':<52} {'value':>10}")
    print(f"{'data loader, 518 px, 0 workers (baseline), images/s':<52} {base:>10.1f}")
    print(f"{f'data loader, 518 px, {args.loader_workers} workers, images/s':<52} {par:>10.1f}")
    print(f"{'tiny stage-2 DeepSpeed steps/s (batch 2, world 1)':<52} {sps:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
