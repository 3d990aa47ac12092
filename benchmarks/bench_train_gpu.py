"""Benchmark stage-2 training at full size on one GPU: tokens/s per GPU and model FLOPs utilisation (MFU).

Builds the real architecture with random weights (nothing is downloaded): the BiomedCLIP-CXR vision side
(timm vit_base_patch14_dinov2 at 518 px -> 1369 patch tokens, via `build_vision_tower`), the mlp2x_gelu projector
and a Vicuna-7B-shaped LLaMA in bf16, then the training worker's own pieces: `assemble_training_model` (LoRA
r 64 / alpha 128 on every linear layer of the LM, projector trainable, frozen LM and tower), `parameter_groups`,
the generated DeepSpeed ZeRO-2 config and a DeepSpeed engine (world size 1). Each variant runs in its own process
so that memory from one does not leak into the next:

    attention  sdpa | flash_attention_2 (when flash-attn is installed)
    gradient checkpointing on | off

Each sample is --text-tokens text positions (the v1 prompt plus findings) + 1369 image rows; the last
--answer-tokens text positions are supervised.

  tokens/s  = LM positions (text + image rows) processed per second per GPU, fwd + bwd + optimizer step
  MFU       = model FLOPs per second / --peak-tflops. Model FLOPs per LM position: 4 x (LM params w/o embeddings)
              (forward + input gradients; the frozen weights get no weight gradient) + 12 x layers x hidden x
              positions (attention) ; plus the tower forward and the projector fwd+bwd per image. Recomputation by
              gradient checkpointing is not counted (it is overhead, as in the PaLM definition).

    python benchmarks/bench_train_gpu.py [--batch-size 16] [--steps 5] [--peak-tflops 989]
    python benchmarks/bench_train_gpu.py --tiny        # a CPU smoke run of the same code with a tiny model
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llavarad_cli.model.shapes import RELEASED_VISION_CONFIG, VICUNA_7B

#: Dense bf16 peak (no sparsity) by device name fragment, TFLOP/s.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="per-device batch (the paper: 16)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps after 2 warm-up steps")
    parser.add_argument("--text-tokens", type=int, default=150)
    parser.add_argument("--answer-tokens", type=int, default=90)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: checks the script, not speed")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: "attn,gc" in a child process
    return parser.parse_args(argv)


def make_spec(tmp: Path, tiny: bool, gc: bool, attn: str, batch: int):
    from llavarad_cli import specs

    (tmp / "records.json").write_text("[]")
    (tmp / "images").mkdir(exist_ok=True)
    return specs.build_spec("finetune", {
        "model": {"base": "random", "attn_implementation": attn},
        "data": {"train_records": str(tmp / "records.json"), "image_folder": str(tmp / "images"), "template": "v1"},
        "train": {"precision": "fp32" if tiny else "bf16", "gradient_checkpointing": gc,
                  "per_device_batch_size": batch, "global_batch_size": batch},
        "lora": {"r": 4 if tiny else 64, "alpha": 8 if tiny else 128},
        "output": {"dir": str(tmp / "out")},
    })


def build(spec, tiny: bool, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llavarad_cli import testing
    from llavarad_cli.model.vision import build_vision_tower
    from llavarad_cli.model.loading import DTYPES
    from llavarad_cli.train.build import assemble_training_model

    dtype = DTYPES[spec.train.precision]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("tiny.json" if tiny else "biomedclipcxr_518.json")
        path.write_text(json.dumps(testing.tiny_vision_config() if tiny else RELEASED_VISION_CONFIG))
        tower = build_vision_tower(path).to(device)
    config = testing.tiny_llama_config() if tiny else LlamaConfig(**VICUNA_7B)
    config._attn_implementation = spec.model.attn_implementation
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            lm = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return assemble_training_model(lm, tower, spec)


def model_flops_per_sample(model, text: int) -> float:
    """Forward + input-gradient FLOPs of the frozen LM, attention, tower forward, projector fwd+bwd."""
    lm_config = model.lm.config
    embed = model.lm.get_input_embeddings().weight.numel()
    lm_params = sum(p.numel() for n, p in model.lm.named_parameters() if "lora_" not in n) - embed
    patches = model.num_image_tokens
    positions = text - 1 + patches
    flops = 4 * lm_params * positions
    flops += 12 * lm_config.num_hidden_layers * lm_config.hidden_size * positions * positions / 2  # causal
    flops += 2 * sum(p.numel() for p in model.vision_tower.parameters()) * (patches + 1)
    flops += 6 * sum(p.numel() for p in model.projector.parameters()) * patches
    return float(flops)


def run_one(args, attn: str, gc: bool) -> dict:
    import deepspeed
    import torch

    from llavarad_cli.prompts import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llavarad_cli.train import launcher
    from llavarad_cli.train.build import parameter_groups
    from llavarad_cli.train.worker import init_distributed

    cpu = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if cpu else "cuda")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed(cpu)
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(Path(tmp), cpu, gc, attn, args.batch_size)
        model = build(spec, cpu, device)
        optimizer = torch.optim.AdamW(parameter_groups(model, spec), lr=1e-4)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                               config=launcher.deepspeed_config(spec, 1))
    engine.train()
    dtype = next(model.projector.parameters()).dtype
    b, text = args.batch_size, args.text_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.lm.config.vocab_size, (b, text), generator=g)
    ids[:, 0] = 1
    ids[:, 40] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, : text - args.answer_tokens] = IGNORE_INDEX
    size = model.vision_tower.image_size
    batch = {"input_ids": ids.to(engine.device), "attention_mask": torch.ones_like(ids).to(engine.device),
             "labels": labels.to(engine.device),
             "pixel_values": torch.randn(b, 3, size, size, generator=g).to(engine.device, dtype)}

    def step():
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        if not cpu:
            torch.cuda.synchronize()

    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(2):
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        elapsed = (time.perf_counter() - start) / args.steps
    except torch.OutOfMemoryError:
        return {"attn": attn, "gc": gc, "oom": True}
    positions = b * (text - 1 + model.num_image_tokens)
    result = {"attn": attn, "gc": gc, "step_s": elapsed, "tokens_per_s": positions / elapsed,
              "samples_per_s": b / elapsed, "tflops": model_flops_per_sample(model, text) * b / elapsed / 1e12,
              "device": "cpu" if cpu else torch.cuda.get_device_name()}
    if not cpu:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LLAVARAD_DS_NO_SHM", "1")
    if args.one:
        attn, gc = args.one.split(",")
        print("RESULT " + json.dumps(run_one(args, attn, gc == "1")), flush=True)
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("bench_train_gpu.py needs a CUDA GPU; use --tiny for a CPU smoke run, or "
              "benchmarks/bench_train_cpu.py", file=sys.stderr)
        return 2
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and not args.tiny else [])
    results = []
    for attn in attns:
        for gc in (True, False):
            cmd = [sys.executable, __file__, "--one", f"{attn},{int(gc)}", "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--text-tokens", str(args.text_tokens),
                   "--answer-tokens", str(args.answer_tokens)] + (["--tiny"] if args.tiny else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                results.append({"attn": attn, "gc": gc, "error": tail[0][:120]})
            else:
                results.append(json.loads(line[len("RESULT "):]))
    device = next((r["device"] for r in results if "device" in r), "?")
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    print(f"stage 2 (LoRA r64 + projector, ZeRO-2, world 1) on {device}; batch {args.batch_size} x "
          f"({args.text_tokens} text + image rows) positions")
    print(f"{'attention':<18} {'ckpt':>4} {'step s':>7} {'tokens/s':>9} {'samples/s':>9} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'peak GiB':>8}")
    for r in results:
        head = f"{r['attn']:<18} {'on' if r['gc'] else 'off':>4}"
        if "error" in r or r.get("oom"):
            print(f"{head} {'out of memory' if r.get('oom') else 'failed: ' + r['error']}")
            continue
        mfu = f"{100 * r['tflops'] / peak:5.1f}%" if peak and not args.tiny else "   n/a"
        print(f"{head} {r['step_s']:>7.3f} {r['tokens_per_s']:>9.0f} {r['samples_per_s']:>9.2f} "
              f"{r['tflops']:>8.1f} {mfu:>6} {r.get('peak_gib', float('nan')):>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "peak_tflops": peak, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
