"""Benchmark batched inference on the tiny LLaVA-Rad (CPU): reports/s at batch sizes 1, 8, 32 and the speedup.

What is timed is the library path `infer` uses per batch (`Predictor.predict`: v1 prompts, tokenisation around
<image>, left padding, splice, `generate`), on pre-processed images so image decoding does not hide the model.
Every report generates exactly --new-tokens tokens (min = max), so batch sizes do equal work. Baseline = batch
size 1 (one report per generate() call). Prompts use the records' real mix of with/without-reason wordings.

    python benchmarks/bench_infer_cpu.py [--reports 64] [--new-tokens 32] [--batch-sizes 1,8,32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    import torch

    from llavarad_cli.infer.generate import GenerationSettings, Predictor
    from llavarad_cli.prompts import user_turn
    from llavarad_cli.testing import tiny_llavarad_model

    torch.set_num_threads(args.threads)
    model, tokenizer, _ = tiny_llavarad_model()
    settings = GenerationSettings(max_new_tokens=args.new_tokens, extra={"min_new_tokens": args.new_tokens})
    predictor = Predictor(model, tokenizer, settings)
    reasons = [None, "cough", "Chest pain, cough, fever, dyspnea, evaluate for pneumonia.", "preop",
               "Large left pleural effusion is new. Evaluate for pneumothorax."]
    queries = [user_turn(reasons[i % len(reasons)]) for i in range(args.reports)]
    pixels = torch.randn(args.reports, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    predictor.predict(queries[:2], pixels[:2])  # warm-up: lazy imports, first-call allocations

    rows = []
    for bs in sizes:
        start = time.perf_counter()
        for i in range(0, args.reports, bs):
            predictor.predict(queries[i:i + bs], pixels[i:i + bs])
        rows.append((bs, args.reports / (time.perf_counter() - start)))
    base = rows[0][1]
    print(f"tiny LLaVA-Rad on CPU ({args.threads} threads), {args.reports} reports x {args.new_tokens} new tokens")
    print(f"{'batch size':>10}  {'reports/s':>10}  {'speedup vs bs ' + str(sizes[0]):>18}")
    for bs, rate in rows:
        print(f"{bs:>10}  {rate:>10.2f}  {rate / base:>17.2f}x")


if __name__ == "__main__":
    main()
