"""Benchmark LLaVA-Rad inference at full size on one GPU: reports/s, prefill and decode time per batch size.

Builds the real architecture with random weights (nothing is downloaded): the BiomedCLIP-CXR vision side
(timm vit_base_patch14_dinov2 at 518 px -> 1369 patch tokens, through the same `build_vision_tower` the loader
uses), the mlp2x_gelu projector (768 -> 4096 -> 4096) and a Vicuna-7B-shaped LLaMA (32 layers, hidden 4096,
MLP 11008, vocab 32000), in bf16 (fp16 where bf16 is missing) with SDPA attention. Prompts are ~100 text tokens
(the v1 prompt with a reason) plus the image; every report generates exactly --new-tokens tokens.

  prefill  = generate(max_new_tokens=1): vision tower + projector + the prompt's forward pass
  decode   = (full generate - prefill) / (new tokens - 1), per generated token for the whole batch
  reports/s = batch size / full generate time

    python benchmarks/bench_infer_gpu.py [--batch-sizes 1,8,16,32] [--new-tokens 128] [--repeats 2] [--attn sdpa]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from llavarad_cli.model.shapes import RELEASED_VISION_CONFIG, VICUNA_7B

PROMPT_TEXT_TOKENS = (38, 60)  # tokens before and after <image> in the v1 prompt with a typical reason


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,16,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (prefill is timed separately)")
    return args


def sequence_length(num_patches: int, text_tokens: tuple[int, int] = PROMPT_TEXT_TOKENS) -> int:
    """Positions the LM sees for one prompt: BOS + text + image patches (the -200 sentinel is replaced)."""
    return 1 + text_tokens[0] + num_patches + text_tokens[1]


def build_model(dtype, attn: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llavarad_cli.model.assemble import assemble_model
    from llavarad_cli.model.vision import build_vision_tower

    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "biomedclipcxr_518.json"
        config_path.write_text(json.dumps(RELEASED_VISION_CONFIG))
        tower = build_vision_tower(config_path)  # random weights: no checkpoint
    config = LlamaConfig(**VICUNA_7B)
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device("cuda"):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            lm = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    return assemble_model(lm.eval(), tower, "mlp2x_gelu", seed=0, dtype=dtype).eval()


def time_generate(model, ids, mask, pixels, new_tokens: int) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(ids, mask, pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=0, use_cache=True)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_infer_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False on this machine); "
              "use benchmarks/bench_infer_cpu.py here.", file=sys.stderr)
        return 2
    from llavarad_cli.prompts import IMAGE_TOKEN_INDEX

    from llavarad_cli.model.loading import pick_dtype

    dtype = pick_dtype(torch.device("cuda"), args.dtype)
    built = time.perf_counter()
    model = build_model(dtype, args.attn)
    build_s = time.perf_counter() - built
    params = sum(p.numel() for p in model.parameters())
    before, after = PROMPT_TEXT_TOKENS
    results = []
    for bs in args.batch_sizes:
        g = torch.Generator(device="cuda").manual_seed(bs)
        text = torch.randint(3, 32000, (bs, before + after), device="cuda", generator=g)
        ids = torch.cat([torch.ones(bs, 1, dtype=torch.long, device="cuda"), text[:, :before],
                         torch.full((bs, 1), IMAGE_TOKEN_INDEX, device="cuda"), text[:, before:]], dim=1)
        mask = torch.ones_like(ids)
        pixels = torch.randn(bs, 3, 518, 518, device="cuda", dtype=dtype, generator=g)
        torch.cuda.reset_peak_memory_stats()
        try:
            time_generate(model, ids, mask, pixels, 2)  # warm-up
            prefill = min(time_generate(model, ids, mask, pixels, 1) for _ in range(args.repeats))
            total = min(time_generate(model, ids, mask, pixels, args.new_tokens) for _ in range(args.repeats))
        except torch.OutOfMemoryError:
            results.append({"batch_size": bs, "oom": True})
            torch.cuda.empty_cache()
            continue
        results.append({"batch_size": bs, "reports_per_s": bs / total, "prefill_s": prefill,
                        "decode_ms_per_token": 1000 * (total - prefill) / (args.new_tokens - 1),
                        "generate_s": total, "peak_gib": torch.cuda.max_memory_allocated() / 2**30})

    name = torch.cuda.get_device_name()
    print(f"LLaVA-Rad full size ({params / 1e9:.2f} B params, {str(dtype).replace('torch.', '')}, {args.attn}) "
          f"on {name}; {sequence_length(model.num_image_tokens)} prompt positions, {args.new_tokens} new tokens; "
          f"built in {build_s:.0f} s")
    print(f"{'batch':>5}  {'reports/s':>9}  {'prefill s':>9}  {'decode ms/tok':>13}  {'generate s':>10}  {'peak GiB':>8}")
    for r in results:
        if r.get("oom"):
            print(f"{r['batch_size']:>5}  out of memory")
            continue
        print(f"{r['batch_size']:>5}  {r['reports_per_s']:>9.2f}  {r['prefill_s']:>9.3f}  "
              f"{r['decode_ms_per_token']:>13.1f}  {r['generate_s']:>10.2f}  {r['peak_gib']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "dtype": str(dtype), "attn": args.attn,
                                         "new_tokens": args.new_tokens, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
