"""Peak memory of `llavarad export` on a model of over a billion parameters, against the size of its weights.

Builds (once, in a child process) a native llavarad checkpoint with random weights: a LLaMA LM (hidden 2048,
20 layers, intermediate 5504, vocabulary 32000: 1.14 B parameters), a full-size DINOv2 ViT-B/14 tower at 518 px
and the mlp2x_gelu projector, all fp16. Then, each in a fresh process, measures the peak resident set
(``VmHWM``) of: importing what export imports; loading the model (``load_model``); the whole export. The
export streams one tensor at a time to its shards, so its peak should be that of loading plus about one tensor.

    python benchmarks/bench_export_memory.py [--work /tmp/bench-export] [--layers 20] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BUILD = r"""
import json, sys, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
from llavarad_cli import testing
from llavarad_cli.model.native import save_native_checkpoint
from llavarad_cli.model.llavarad import LlavaRadConfig, LlavaRadModel
from llavarad_cli.model.projector import build_projector
from llavarad_cli.model.vision import build_vision_tower

out, layers = Path(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
tower_json = out.parent / "vit_b14_518.json"
tower_json.write_text(json.dumps({"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch14_dinov2",
    "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear", "image_size": 518},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}))
tower = build_vision_tower(tower_json).to(torch.float16)
config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=layers,
                     num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
torch.set_default_dtype(torch.float16)
lm = LlamaForCausalLM(config).eval()
torch.set_default_dtype(torch.float32)
projector = build_projector("mlp2x_gelu", 768, 2048).to(torch.float16)
model = LlavaRadModel(lm, tower, projector, LlavaRadConfig(mm_hidden_size=768, vision_config_name="vit_b14_518"))
save_native_checkpoint(out, model, lm_weights="full", tokenizer=testing.tiny_tokenizer())
print(sum(p.numel() for p in model.parameters()))
"""

PEAK = r"""
import sys
def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
mode, source, out = sys.argv[1], sys.argv[2], sys.argv[3]
import torch, transformers, timm, open_clip, peft  # what every mode imports
if mode == "load":
    from llavarad_cli.model.loading import load_model
    model, _ = load_model(source, device="cpu", dtype="fp16")
elif mode == "export":
    from llavarad_cli.model.export import export_model
    export_model(source, out, dtype="fp16", overwrite=True)
print(peak_mib())
"""


def _run(code: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                                 "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"})
    if result.returncode:
        sys.exit(f"child failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--layers", type=int, default=20, help="LM layers (20: 1.14 B parameters)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    source, out = work / "source", work / "export"
    try:
        if not (source / "llavarad.json").is_file():
            print(f"building the random model in {source} ...", file=sys.stderr)
            params = int(_run(BUILD, str(source), str(args.layers)))
        else:
            params = None
        peaks = {mode: float(_run(PEAK, mode, str(source), str(out))) for mode in ("imports", "load", "export")}
        weights = _bytes(out) / 2**20
        exported_params = json.loads((out / "config.json").read_text())["text_config"]["num_hidden_layers"]
        print(f"\nmodel: {params or '(existing)'} parameters ({exported_params} LM layers), fp16; "
              f"source weights {_bytes(source) / 2**20:,.0f} MiB, exported {weights:,.0f} MiB\n")
        print("| process | peak RSS MiB | minus imports MiB | × exported weights |")
        print("| --- | ---: | ---: | ---: |")
        base = peaks["imports"]
        for mode, label in (("imports", "imports only"), ("load", "load_model"), ("export", "llavarad export")):
            extra = peaks[mode] - base
            print(f"| {label} | {peaks[mode]:,.0f} | {extra:,.0f} | {extra / weights:.2f} |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
