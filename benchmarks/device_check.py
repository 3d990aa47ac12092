"""One command for the first GPU: speed, memory and fp16 behaviour of inference and training, in one table.

    python benchmarks/device_check.py            # one H100/H200: about 8 minutes, nothing downloaded
    python benchmarks/device_check.py --tiny     # CPU, tiny shapes: checks this script itself (a test runs it)

Writes ``device_check.json`` (``--out``) and prints one table. Each part runs in its own process under its own
time limit, so a part that fails, runs out of memory or hangs is reported as such and the others still run:

  infer_fp16   full size, random weights (model/shapes.py), fp16 = the paper's precision:
               llavarad's batching (length-sorted, left-padded) at its best batch size, and in the same process
               the reference's way (prompts grouped into equal-length batches of at most 8, no padding, HF
               generate on the spliced embeddings); reports/s, prefill s, decode ms/token, peak GiB, the vision
               tower's largest activation, and whether any step's scores were non-finite (fp16 overflow)
  infer_bf16   llavarad's batching in bf16, for comparison
  cli          ``llavarad infer`` end to end on a tiny checkpoint: ``--gpus 1`` (and ``--gpus 2`` when two GPUs
               are visible, which must give the same file), batched == one report at a time, fp16 vs fp32
               findings
  train_sdpa   stage 2 (LoRA r64 + projector, ZeRO-2, world 1) at 7B shape for a few steps through
               bench_train_gpu.py: tokens/s, MFU, peak GiB; ``train_flash`` too when flash-attn is installed
  chexbert     the CheXbert labeler at real size (bert-base + 14 heads, random weights) on the GPU, through
               bench_evaluate.py: llavarad's length-sorted batches against one report at a time (the paper's
               way), reports/s; the labels must be identical
  radgraph     the F1-RadGraph annotator at real size (PubMedBERT-base + DyGIE heads, random weights) on the
               GPU, through bench_evaluate.py: shared BERT passes against the radgraph package's RadGraph one
               report at a time (the paper's batch size 1), reports/s; the annotations must be identical;
               skipped when the radgraph package is not installed

Prompt lengths follow the Open-I indications in the v1 prompt (tests/data/openi; 3.2 characters per token),
so equal-length groups are as full as on a real test set. Throughput is measured on every k-th batch of that
whole set (a ratio estimate over the set), generating exactly --new-tokens tokens per report.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the other benchmark scripts, reused by import

#: Time limit of each part in seconds at full size. Parts end well before their limits when all is well;
#: about 11 minutes is the most the default parts can take together (13 with flash-attn installed).
PART_LIMITS = {"infer_fp16": 140, "infer_bf16": 90, "cli": 150, "train_sdpa": 150, "train_flash": 120,
               "chexbert": 60, "radgraph": 90}
#: The tiny run is mostly process start-up (imports), which a busy CPU can slow down many times over.
TINY_LIMIT = 600
# Vicuna token counts of the v1 inference prompt (SentencePiece LLaMA tokenizer):
PROMPT_BEFORE_IMAGE = 34       # BOS, the system turn and " USER: " before <image>
PROMPT_AFTER_IMAGE = 19        # "\nProvide a description of the findings in the radiology image." ASSISTANT:"
REASON_WORDING = 4             # " given the following indication:" instead of the final "."
CHARS_PER_TOKEN = 3.2          # Open-I indications: 10.1 tokens on average for 7.9 * 4 characters


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the script, not a GPU")
    parser.add_argument("--out", type=Path, default=Path("device_check.json"))
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per report (default 64; tiny 8)")
    parser.add_argument("--parts", default=None, help="comma-separated subset of " + ",".join(PART_LIMITS))
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part, print RESULT
    args = parser.parse_args(argv)
    if args.new_tokens is None:
        args.new_tokens = 8 if args.tiny else 64
    return args


# -- shared helpers --------------------------------------------------------------------------------------------

def prompt_lengths(limit: int | None = None) -> list[int]:
    """Token length of each Open-I record's v1 inference prompt (without the image rows), input order."""
    lengths = []
    with open(ROOT / "tests" / "data" / "openi" / "indiana_reports.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            reason = (row.get("indication") or "").strip()
            extra = REASON_WORDING + max(1, round(len(reason) / CHARS_PER_TOKEN)) if reason else 0
            lengths.append(PROMPT_BEFORE_IMAGE + 1 + PROMPT_AFTER_IMAGE + extra)  # + 1: the <image> sentinel
    return lengths[:limit] if limit else lengths


def llavarad_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """llavarad infer: longest first, consecutive batches of ``batch_size`` (left-padded to their longest)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def reference_batches(lengths: list[int], batch_size: int = 8) -> list[list[int]]:
    """The reference: stable sort by length, runs of exactly equal length, each cut at ``batch_size``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] == lengths[i] and len(batches[-1]) < batch_size:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def every_kth(batches: list[list[int]], count: int) -> list[list[int]]:
    """``count`` batches spread evenly over the set (a fixed, deterministic sample)."""
    if len(batches) <= count:
        return batches
    step = len(batches) / count
    return [batches[int(i * step)] for i in range(count)]


def batch_inputs(rows: list[int], lengths: list[int], vocab: int, pad_left: bool, device, seed: int):
    """Random prompt ids of the given lengths with one image sentinel after the system turn; left-padded."""
    import torch

    from llavarad_cli.prompts import IMAGE_TOKEN_INDEX

    width = max(lengths[i] for i in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    for r, i in enumerate(rows):
        n = lengths[i]
        if not pad_left and n != width:
            raise ValueError("an unpadded batch needs equal lengths")
        row = torch.randint(3, vocab, (n,), generator=g)
        row[0] = 1
        row[PROMPT_BEFORE_IMAGE] = IMAGE_TOKEN_INDEX
        ids[r, width - n:] = row
        mask[r, width - n:] = 1
    return ids.to(device), mask.to(device)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# -- part: inference speed ---------------------------------------------------------------------------------------

def build_infer_model(tiny: bool, dtype):
    import torch

    if tiny:
        from llavarad_cli.testing import tiny_llavarad_model

        model, _, _ = tiny_llavarad_model()
        return model.to(dtype).eval()
    import bench_infer_gpu

    return bench_infer_gpu.build_model(dtype, "sdpa")


class ScoreWatch:
    """Counts generation steps whose scores hold NaN or +inf (what an fp16 overflow turns into)."""

    def __init__(self):
        self.bad_steps = 0

    def __call__(self, input_ids, scores):
        import torch

        self.bad_steps += int(bool(torch.isnan(scores).any() | torch.isposinf(scores).any()))
        return scores


def timed_generate(model, ids, mask, pixels, new_tokens: int, watch: ScoreWatch | None = None) -> float:
    from transformers import LogitsProcessorList

    sync(model.device)
    start = time.perf_counter()
    extra = {"logits_processor": LogitsProcessorList([watch])} if watch else {}
    model.generate(ids, mask, pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=0, use_cache=True, **extra)
    sync(model.device)
    return time.perf_counter() - start


def run_batches(model, batches, lengths, new_tokens, pad_left, watch, seed=0) -> dict:
    import torch

    size = model.vision_tower.image_size
    total_s, reports = 0.0, 0
    for k, rows in enumerate(batches):
        ids, mask = batch_inputs(rows, lengths, model.lm.config.vocab_size, pad_left, model.device, seed + k)
        g = torch.Generator().manual_seed(seed + k)
        pixels = torch.randn(len(rows), 3, size, size, generator=g).to(model.device, model.dtype)
        total_s += timed_generate(model, ids, mask, pixels, new_tokens, watch)
        reports += len(rows)
    return {"reports": reports, "seconds": total_s, "reports_per_s": reports / total_s}


def tower_absmax(model, pixels) -> float:
    """The largest |activation| leaving any vision-tower block that runs (fp16 overflows past 65504)."""
    import torch

    peaks: list[float] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: peaks.append(float(out.abs().max())))
             for block in model.vision_tower.trunk.blocks]
    try:
        with torch.no_grad():
            model.vision_tower(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    return max(peaks)


def part_infer(args, dtype_name: str) -> dict:
    import torch

    tiny = args.tiny
    device = torch.device("cpu" if tiny else "cuda")
    # CPUs emulate half precision (hundreds of ms per tiny decode step): the tiny run checks the code in fp32.
    dtype = torch.float32 if tiny else {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    built = time.perf_counter()
    model = build_infer_model(tiny, dtype)
    out = {"dtype": dtype_name if not tiny else f"{dtype_name} (tiny: fp32)", "build_s": time.perf_counter() - built,
           "new_tokens": args.new_tokens, "device": "cpu" if tiny else torch.cuda.get_device_name()}
    lengths = prompt_lengths(48 if tiny else None)
    out["reports_in_set"] = len(lengths)
    sample = 2 if tiny else 6
    candidates = [4, 8] if tiny else [16, 32, 64]
    watch = ScoreWatch()
    timed_generate(model, *batch_inputs([0, 1], lengths, model.lm.config.vocab_size, True, device, 99),
                   torch.zeros(2, 3, model.vision_tower.image_size, model.vision_tower.image_size,
                               device=device, dtype=dtype), 2)  # warm-up
    per_size = {}
    for bs in candidates:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            per_size[bs] = run_batches(model, every_kth(llavarad_batches(lengths, bs), max(1, sample // 2)),
                                       lengths, args.new_tokens, True, watch)
            if device.type == "cuda":
                per_size[bs]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except torch.OutOfMemoryError:
            per_size[bs] = {"oom": True}
            torch.cuda.empty_cache()
    ok = {bs: r for bs, r in per_size.items() if not r.get("oom")}
    best = max(ok, key=lambda bs: ok[bs]["reports_per_s"])
    out["llavarad"] = {"batch_size": best, **ok[best], "per_batch_size": per_size}
    # Prefill and decode at the best size: generate(1 token) vs the full generate, on the longest batch.
    rows = llavarad_batches(lengths, best)[0]
    ids, mask = batch_inputs(rows, lengths, model.lm.config.vocab_size, True, device, 7)
    size = model.vision_tower.image_size
    pixels = torch.randn(len(rows), 3, size, size, generator=torch.Generator().manual_seed(7)).to(device, dtype)
    prefill = timed_generate(model, ids, mask, pixels, 1)
    full = timed_generate(model, ids, mask, pixels, args.new_tokens, watch)
    out["llavarad"].update(prefill_s=prefill, decode_ms_per_token=1000 * (full - prefill) / (args.new_tokens - 1))
    if dtype_name == "fp16":
        ref = reference_batches(lengths)
        out["reference"] = {"batch_size": 8, "batches_in_set": len(ref),
                            "mean_batch": len(lengths) / len(ref),
                            **run_batches(model, every_kth(ref, sample), lengths, args.new_tokens, False, watch)}
        out["speedup_vs_reference"] = out["llavarad"]["reports_per_s"] / out["reference"]["reports_per_s"]
    with torch.no_grad():
        hidden = model.encode_images(pixels[:1])
    out["tower_absmax"] = tower_absmax(model, pixels[:1])
    out["projected_finite"] = bool(torch.isfinite(hidden).all())
    out["non_finite_steps"] = watch.bad_steps
    out["peak_gib"] = ok[best].get("peak_gib")  # at the best batch size
    out["ok"] = out["projected_finite"] and watch.bad_steps == 0
    return out


# -- part: llavarad infer end to end -------------------------------------------------------------------------

def _infer_cli(*args: str, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llavarad_cli", "infer", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    return time.perf_counter() - start, proc


def _predictions(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r["prediction"] for r in rows if "prediction" in r}


def part_cli(args) -> dict:
    import torch

    from llavarad_cli import testing
    from llavarad_cli.prompts import conversations

    gpus = 0 if args.tiny else torch.cuda.device_count()
    out: dict = {"gpus_visible": gpus}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        testing.write_tiny_checkpoint(tmp / "ckpt", "native")
        images = ROOT / "tests" / "data" / "cxr-images"
        pngs = sorted(str(p.relative_to(images)) for p in images.rglob("*.png"))
        reasons = [None, "cough", "Chest pain.  Shortness of breath.\n fever", "r/o PNA \n\n eval", "preop",
                   "Large left pleural effusion is new. Evaluate for pneumothorax and for any change since " * 3]
        records = [{"id": f"r{i}", "image": pngs[i % len(pngs)], "reason": reasons[i % len(reasons)],
                    "conversations": conversations(reasons[i % len(reasons)], "The lungs are clear.")}
                   for i in range(8 if args.tiny else 24)]
        (tmp / "q.json").write_text(json.dumps(records))
        common = ["--model", str(tmp / "ckpt"), "--query-file", str(tmp / "q.json"), "--image-folder", str(images),
                  "--max-new-tokens", str(args.new_tokens)]
        placement = ["--device", "cpu"] if args.tiny else ["--gpus", "1"]
        # On GPU the default dtype is fp16; on CPU (tiny) fp32, so there the fp16 run is the odd one out.
        runs = {"batched": [*placement, "--batch-size", "8"],
                "one_at_a_time": [*placement, "--batch-size", "1"],
                "other_dtype": [*placement, "--batch-size", "8", "--dtype", "fp16" if args.tiny else "fp32"]}
        if gpus >= 2:
            runs["two_gpus"] = ["--gpus", "2", "--batch-size", "8"]
        preds = {}
        for name, extra in runs.items():
            target = tmp / name / "preds.jsonl"
            seconds, proc = _infer_cli(*common, *extra, "--output", str(target), timeout=TINY_LIMIT if args.tiny else 60)
            out[f"{name}_s"] = seconds
            if proc.returncode != 0:
                out[f"{name}_error"] = failure_line(proc)[:200]
                continue
            preds[name] = _predictions(target)
        ids = [r["id"] for r in records]
        base = preds.get("batched", {})
        out["reports"] = len(base)
        out["all_predicted"] = sorted(base) == sorted(ids)
        out["non_empty"] = sum(bool(v) for v in base.values())

        def agree(other: str):
            return sum(base.get(i) == preds.get(other, {}).get(i) for i in ids) if other in preds else None

        out["batched_eq_one_at_a_time"] = agree("one_at_a_time")
        out["fp16_eq_fp32"] = agree("other_dtype")
        if "two_gpus" in runs:
            out["one_gpu_eq_two_gpus"] = agree("two_gpus")
    errors = [k for k in out if k.endswith("_error")]
    out["ok"] = (not errors and out["all_predicted"] and out["batched_eq_one_at_a_time"] == len(records)
                 and out.get("one_gpu_eq_two_gpus", len(records)) == len(records))
    return out


# -- part: training ---------------------------------------------------------------------------------------------

def part_train(args, attn: str) -> dict:
    import bench_train_gpu

    # As bench_train_gpu.py itself: skip DeepSpeed's CPU shared-memory op, a ~65 s JIT compile gloo does without.
    os.environ.setdefault("LLAVARAD_DS_NO_SHM", "1")

    bench_args = bench_train_gpu.parse_args(["--batch-size", "2" if args.tiny else "16", "--steps", "3",
                                             *(["--tiny"] if args.tiny else [])])
    result = bench_train_gpu.run_one(bench_args, attn, True)
    peak = next((v for k, v in bench_train_gpu.PEAK_TFLOPS.items() if k in result.get("device", "")), None)
    if peak and not args.tiny and "tflops" in result:
        result["mfu"] = result["tflops"] / peak
    result["ok"] = not result.get("oom")
    return result


def _scorer_sample(count: int) -> list[str]:
    """Distinct Open-I findings sorted by length, as `evaluate` hands them to the scorers."""
    import bench_evaluate

    hyps, refs = bench_evaluate.openi_pairs(2461)
    return sorted(list(dict.fromkeys(refs + hyps))[:count], key=len)


def _versus_paper(rows: list[tuple[str, float]], count: int) -> dict:
    """bench_evaluate's rows (llavarad first, the paper's way second) as reports/s and the speed-up; those
    functions stop with an AssertionError when the labels or annotations differ, so getting here means equal."""
    (_, ours), (_, paper) = rows[0], rows[1]
    return {"reports": count, "llavarad_reports_per_s": count / ours, "paper_reports_per_s": count / paper,
            "speedup": paper / ours, "identical": count, "ok": True}


def part_chexbert(args) -> dict:
    import bench_evaluate

    texts = _scorer_sample(32 if args.tiny else 512)
    return _versus_paper(bench_evaluate.bench_chexbert(texts, 128, "cpu" if args.tiny else "cuda", args.tiny),
                         len(texts))


def part_radgraph(args) -> dict:
    if importlib.util.find_spec("radgraph") is None:
        return {"ok": True, "skipped": "radgraph package not installed (pip install 'llavarad[radgraph]')"}
    import bench_evaluate

    texts = _scorer_sample(16 if args.tiny else 128)
    return _versus_paper(bench_evaluate.bench_radgraph(texts, "cpu" if args.tiny else "cuda", args.tiny),
                         len(texts))


PARTS = {
    "infer_fp16": lambda a: part_infer(a, "fp16"),
    "infer_bf16": lambda a: part_infer(a, "bf16"),
    "cli": part_cli,
    "train_sdpa": lambda a: part_train(a, "sdpa"),
    "train_flash": lambda a: part_train(a, "flash_attention_2"),
    "chexbert": part_chexbert,
    "radgraph": part_radgraph,
}


# -- driver ----------------------------------------------------------------------------------------------------

def failure_line(proc: subprocess.CompletedProcess) -> str:
    """The exception line of a failed part (warnings are printed after it often enough), else its last line."""
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    errors = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception|Interrupt)\b", ln)]
    return (errors or lines or ["no output"])[-1]


def run_part(name: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--new-tokens", str(args.new_tokens)]
    if args.tiny:
        cmd.append("--tiny")
    start = time.perf_counter()
    limit = TINY_LIMIT if args.tiny else PART_LIMITS[name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"ok": False, "status": f"timed out after {limit} s", "wall_s": limit}
    wall = time.perf_counter() - start
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if line is None:
        return {"ok": False, "status": f"failed (exit {proc.returncode}): " + failure_line(proc)[:160], "wall_s": wall}
    result = json.loads(line[len("RESULT "):])
    result.update(wall_s=wall, status="ok" if result.get("ok") else "check failed")
    return result


def table(results: dict) -> list[str]:
    def f(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    lines = [f"{'part':<11} {'what':<44} {'result'}"]
    for name, r in results.items():
        if r.get("status") not in ("ok", "check failed"):
            lines.append(f"{name:<11} {'':<44} {r.get('status')}")
            continue
        if name.startswith("infer"):
            ll = r["llavarad"]
            lines.append(f"{name:<11} {'llavarad, best batch ' + str(ll['batch_size']):<44} "
                         f"{f(ll['reports_per_s'], '.2f')} reports/s, prefill {f(ll['prefill_s'], '.3f')} s, "
                         f"decode {f(ll['decode_ms_per_token'], '.1f')} ms/token, peak {f(r.get('peak_gib'), '.1f')} GiB")
            if "reference" in r:
                ref = r["reference"]
                lines.append(f"{'':<11} {'reference way (equal length, <= 8, mean ' + f(ref['mean_batch'], '.1f') + ')':<44} "
                             f"{f(ref['reports_per_s'], '.2f')} reports/s; llavarad "
                             f"{f(r['speedup_vs_reference'], '.2f')}x")
            lines.append(f"{'':<11} {'tower |max| activation, non-finite steps':<44} "
                         f"{f(r['tower_absmax'], '.1f')}, {r['non_finite_steps']}  [{r['status']}]")
        elif name == "cli":
            n = r.get("reports")
            lines.append(f"{name:<11} {'llavarad infer on a tiny checkpoint':<44} "
                         f"{n} reports in {f(r.get('batched_s'), '.1f')} s, {r.get('non_empty')} non-empty")
            lines.append(f"{'':<11} {'batched == one at a time':<44} {r.get('batched_eq_one_at_a_time')}/{n}")
            lines.append(f"{'':<11} {'fp16 == fp32 findings':<44} {r.get('fp16_eq_fp32')}/{n}")
            if "one_gpu_eq_two_gpus" in r:
                lines.append(f"{'':<11} {'--gpus 1 == --gpus 2':<44} {r['one_gpu_eq_two_gpus']}/{n}")
            for key in sorted(k for k in r if k.endswith("_error")):
                lines.append(f"{'':<11} {key[:-6] + ' run failed':<44} {r[key]}")
            lines.append(f"{'':<11} {'':<44} [{r['status']}]")
        elif name.startswith("train"):
            mfu = f"{100 * r['mfu']:.1f} %" if "mfu" in r else "n/a"
            lines.append(f"{name:<11} {'stage 2, ' + r.get('attn', '') + ', checkpointing on':<44} "
                         f"{f(r.get('tokens_per_s'), '.0f')} tokens/s, MFU {mfu}, "
                         f"peak {f(r.get('peak_gib'), '.1f')} GiB  [{r['status']}]")
        elif name in ("chexbert", "radgraph"):
            if "skipped" in r:
                lines.append(f"{name:<11} {'':<44} skipped: {r['skipped']}")
                continue
            lines.append(f"{name:<11} {'llavarad vs the paper way (one at a time)':<44} "
                         f"{f(r['llavarad_reports_per_s'], '.1f')} vs {f(r['paper_reports_per_s'], '.1f')} "
                         f"reports/s, {f(r['speedup'], '.2f')}x")
            lines.append(f"{'':<11} {'identical ' + ('labels' if name == 'chexbert' else 'annotations'):<44} "
                         f"{r['identical']}/{r['reports']} reports  [{r['status']}]")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part:
        print("RESULT " + json.dumps(PARTS[args.part](args)), flush=True)
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("device_check.py needs a CUDA GPU; --tiny runs it on CPU with tiny shapes", file=sys.stderr)
        return 2
    names = args.parts.split(",") if args.parts else list(PART_LIMITS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        print(f"unknown part(s) {unknown}; choose from {','.join(PARTS)}", file=sys.stderr)
        return 2
    if "train_flash" in names and (args.tiny or importlib.util.find_spec("flash_attn") is None):
        names.remove("train_flash")
    results = {}
    for name in names:
        results[name] = run_part(name, args)
        print(f"  {name}: {results[name]['status']} ({results[name]['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    lines = table(results)
    print("\n".join(lines))
    summary = {"tiny": args.tiny, "new_tokens": args.new_tokens, "torch": torch.__version__,
               "gpus": 0 if args.tiny else torch.cuda.device_count(),
               "device": "cpu" if args.tiny else torch.cuda.get_device_name(), "parts": results, "table": lines}
    from llavarad_cli.io_utils import atomic_write_json

    atomic_write_json(args.out, summary)
    print(f"wrote {args.out}")
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
