"""Benchmark `llavarad evaluate` against the paper's way, same run: lexical metrics first, then CheXbert and RadGraph.

Pairs come from real Open-I findings (tests/data/openi): reference = report i, prediction = report i+1, 2,461 of
them by default (the size of the MIMIC-CXR test set; ``--limit`` takes fewer).

1. Lexical, whole process (start-up included): ``llavarad evaluate --metrics bleu,rouge`` (500-resample CIs)
   against the paper's lexical path in a fresh Python: sacrebleu ``corpus_score(n_bootstrap=500)`` for BLEU-1 and
   BLEU-4 plus rouge-score's ``BootstrapAggregator(n_samples=500)`` over ROUGE-L with NumPy's global RNG seeded 3.
   Checks: BLEU values equal, and metrics.json's ``paper_figures.ROUGE-L`` equals the aggregator's mid. This
   table is printed before the model parts start.
2. CheXbert, real size (bert-base + 14 heads, random weights, a WordPiece vocabulary trained here), eager
   attention: llavarad's length-sorted batches against the paper's way (one report at a time, as f1chexbert's
   ``get_label`` does); the labels must be identical. Then the same batches with SDPA attention (transformers
   5's default, not used): its time, and how many cells it changes.
3. RadGraph, real size (PubMedBERT-base shape + DyGIE heads, random weights in radgraph.tar.gz's layout):
   llavarad's annotator (BERT shared by up to 32 reports a pass, called as `evaluate` calls it) against the
   radgraph package's ``RadGraph`` class one report at a time (the paper's batch size 1); the annotations must
   be identical. Skipped without the radgraph package or with ``--radgraph-texts 0``.
Nothing is downloaded.

    python benchmarks/bench_evaluate.py [--limit 2461] [--chexbert-texts 256] [--radgraph-texts 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the offline stand-ins for the scorer files live with the tests (they are not part of the package)
sys.path.insert(0, str(ROOT / "tests"))

PAPER_LEXICAL = r"""
import json, sys
import numpy as np
np.random.seed(3)  # the paper's script seeded NumPy's global RNG at import
from rouge_score import rouge_scorer, scoring
from sacrebleu.metrics import BLEU
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
hyps, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
b4 = BLEU().corpus_score(hyps, [refs], n_bootstrap=500)
b1 = BLEU(max_ngram_order=1).corpus_score(hyps, [refs], n_bootstrap=500)
scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
agg = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=500)
for h, r in zip(hyps, refs):
    agg.add_scores(scorer.score(r, h))
print(json.dumps({"BLEU-1": b1.score, "BLEU-4": b4.score, "ROUGE-L mid": agg.aggregate()["rougeL"].mid.fmeasure}))
"""


def openi_pairs(n: int) -> tuple[list[str], list[str]]:
    rows = list(csv.DictReader((ROOT / "tests/data/openi/indiana_reports.csv").open(encoding="utf-8")))
    findings = [r["findings"].strip() for r in rows if r["findings"].strip()]
    refs = [findings[i % len(findings)] for i in range(n)]
    hyps = [findings[(i + 1) % len(findings)] for i in range(n)]
    return hyps, refs


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return time.perf_counter() - t0, out


def bench_lexical(hyps, refs, tmp: Path, rounds: int) -> list[tuple[str, float]]:
    preds = tmp / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": str(i), "prediction": h, "reference": r}) + "\n"
                             for i, (h, r) in enumerate(zip(hyps, refs))), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    ours_cmd = [sys.executable, "-m", "llavarad_cli", "evaluate", str(preds), "--metrics", "bleu,rouge",
                "--bootstrap", "500", "--out", str(tmp / "ev")]
    paper_cmd = [sys.executable, "-c", PAPER_LEXICAL, str(preds)]
    ours_t, paper_t = [], []
    for _ in range(rounds):  # interleaved, best of N: the machine is shared
        ours_t.append(timed(ours_cmd, env)[0])
        dt, out = timed(paper_cmd, env)
        paper_t.append(dt)
    paper = json.loads(out)
    metrics = json.loads((tmp / "ev/metrics.json").read_text())
    ours = {k: v["value"] for k, v in metrics["metrics"].items()}
    assert ours["BLEU-4"] == paper["BLEU-4"] and ours["BLEU-1"] == paper["BLEU-1"], (ours, paper)
    assert metrics["paper_figures"]["ROUGE-L"] == paper["ROUGE-L mid"], (metrics["paper_figures"], paper)
    print(f"  values: BLEU-1 {ours['BLEU-1']:.4f}  BLEU-4 {ours['BLEU-4']:.4f}  ROUGE-L mean {ours['ROUGE-L']:.6f}, "
          f"paper figure {metrics['paper_figures']['ROUGE-L']:.6f} (= the aggregator's mid)")
    return [("lexical, `llavarad evaluate --metrics bleu,rouge` (whole process)", min(ours_t)),
            ("lexical, paper path: sacrebleu + BootstrapAggregator (whole process)", min(paper_t))]


def bench_chexbert(texts, batch_size: int, device: str = "cpu", tiny: bool = False) -> list[tuple[str, float]]:
    """CheXbert at real size (``tiny``: a small BERT, to check the code) on ``device``; the labels must agree."""
    import numpy as np
    import torch
    from transformers import BertConfig

    import chexbert_fixtures as fixtures

    from llavarad_cli.evaluate import chexbert

    with tempfile.TemporaryDirectory() as tmp:
        tok = fixtures.wordpiece_tokenizer(texts, Path(tmp) / "tok", vocab_size=600 if tiny else 30522)
    torch.manual_seed(0)
    shape = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32) if tiny else {}
    model = chexbert.build_labeler(BertConfig(**shape)).eval()  # bert-base-uncased shape, random weights, eager
    lengths = [len(chexbert.encode(tok, t)) for t in texts]
    print(f"  CheXbert: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{model.bert.config._attn_implementation} attention, {len(texts)} reports, "
          f"{sum(lengths) / len(lengths):.0f} tokens on average (max {max(lengths)})", flush=True)
    chexbert.label_texts(model, tok, texts[:8], batch_size, device)  # warm-up
    t0 = time.perf_counter()
    ours = chexbert.label_texts(model, tok, texts, batch_size, device)
    ours_t = time.perf_counter() - t0
    t0 = time.perf_counter()
    paper = np.concatenate([chexbert.label_texts(model, tok, [t], 1, device) for t in texts])
    paper_t = time.perf_counter() - t0
    assert (ours == paper).all(), int((ours != paper).sum())
    print(f"  CheXbert labels identical: {ours.size} of {ours.size} cells", flush=True)
    # what eager attention costs, and why it is paid: the same batches with transformers 5's default (SDPA)
    model.bert.set_attn_implementation("sdpa")
    t0 = time.perf_counter()
    sdpa = chexbert.label_texts(model, tok, texts, batch_size, device)
    sdpa_t = time.perf_counter() - t0
    print(f"  CheXbert with SDPA attention: {int((sdpa != paper).sum())} of {sdpa.size} cells differ from the "
          f"paper's way, in {int((sdpa != paper).any(axis=1).sum())} reports", flush=True)
    return [(f"CheXbert, llavarad (length-sorted, <= {batch_size} reports, <= {chexbert.padded_tokens_per_batch(device)} "
             "padded tokens a batch)", ours_t),
            ("CheXbert, paper's way (one report at a time)", paper_t),
            ("CheXbert, llavarad's batches with SDPA attention (not used)", sdpa_t)]


def bench_radgraph(texts, device: str = "cpu", tiny: bool = False) -> list[tuple[str, float]]:
    """RadGraph at real size (``tiny``: a small BERT) on ``device``, against the radgraph package's own class."""
    from radgraph_fixtures import PUBMEDBERT, tiny_radgraph

    from llavarad_cli.evaluate import radgraph, radgraph_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "xdg")
        t0 = time.perf_counter()
        folder = tiny_radgraph(tmp / "rg", texts, real_size=not tiny)
        print(f"  RadGraph: real-size random archive built in {time.perf_counter() - t0:.0f} s", flush=True)
        annotate = radgraph.package_annotator(folder / "radgraph.tar.gz", device=device)
        annotate(texts[:2])  # warm-up
        t0 = time.perf_counter()
        ours = [a for start in range(0, len(texts), radgraph.ANNOTATE_STEP)
                for a in annotate(texts[start:start + radgraph.ANNOTATE_STEP])]
        ours_t = time.perf_counter() - t0
        peer = _package_radgraph(folder, tmp / "pkg", PUBMEDBERT, cuda=-1 if device == "cpu" else 0)
        peer([texts[0]])
        t0 = time.perf_counter()
        theirs = [peer([t])["0"] for t in texts]
        paper_t = time.perf_counter() - t0
    same = sum((a["text"], a["entities"]) == (b["text"], b["entities"]) for a, b in zip(ours, theirs))
    print(f"  RadGraph annotations identical: {same} of {len(texts)} reports, "
          f"{sum(len(a['entities']) for a in ours)} entities", flush=True)
    assert same == len(texts)
    return [(f"RadGraph, llavarad (BERT shared by up to {radgraph_model.BATCH_REPORTS} reports)", ours_t),
            ("RadGraph, radgraph package's RadGraph (one at a time)", paper_t)]


def _package_radgraph(folder: Path, cache: Path, bert_name: str, cuda: int = -1):
    """The radgraph package's RadGraph on the same archive, its BERT caches filled for the hub name (no download)."""
    import tarfile

    from radgraph import radgraph as package
    from radgraph.allennlp.common import cached_transformers
    from transformers import AutoModel, BertConfig

    from llavarad_cli.evaluate.radgraph_model import provide_tokenizer

    with tarfile.open(folder / "radgraph.tar.gz") as tar:
        tar.extractall(cache / "radgraph", filter="data")
    bert_dir = folder / bert_name.split("/")[-1]
    provide_tokenizer(bert_dir)
    tok = cached_transformers._tokenizer_cache[(str(bert_dir), frozenset({"use_fast": True}.items()))]
    for kwargs in ({"use_fast": True}, {"use_fast": True, "cache_dir": None}):
        cached_transformers._tokenizer_cache[(bert_name, frozenset(kwargs.items()))] = tok
    bert = AutoModel.from_config(BertConfig.from_json_file(str(bert_dir / "config.json")), attn_implementation="eager")
    cached_transformers._model_cache[cached_transformers.TransformerSpec(bert_name, None, None)] = bert
    return package.RadGraph(model_type="radgraph", model_cache_dir=str(cache), cuda=cuda)


def table(title: str, rows: list[tuple[str, float]], count: int, unit: str) -> None:
    print(f"\n{title}\n{'what':74s} {'wall s':>8s} {unit:>10s}")
    for name, dt in rows:
        print(f"{name:74s} {dt:8.2f} {count / dt:10.1f}")
    print(f"{'speed-up (paper way / llavarad)':74s} {rows[1][1] / rows[0][1]:8.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2461, help="number of prediction/reference pairs")
    parser.add_argument("--rounds", type=int, default=3, help="lexical: best of this many interleaved runs")
    parser.add_argument("--chexbert-texts", type=int, default=256, help="distinct reports for CheXbert (0: skip)")
    parser.add_argument("--radgraph-texts", type=int, default=32, help="distinct reports for RadGraph (0: skip)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    hyps, refs = openi_pairs(args.limit)
    print(f"{args.limit} Open-I findings pairs, 500 bootstrap resamples, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        table("Lexical metrics", bench_lexical(hyps, refs, Path(tmp), args.rounds), args.limit, "pairs/s")

    import torch

    torch.set_num_threads(args.threads)
    texts = list(dict.fromkeys(refs + hyps))  # distinct texts, as evaluate labels each distinct text once
    if args.chexbert_texts:
        sub = texts[: args.chexbert_texts]
        table(f"CheXbert, real size, {args.threads} threads", bench_chexbert(sub, args.batch_size), len(sub),
              "reports/s")
    if args.radgraph_texts:
        try:
            import radgraph.dygie.models.dygie  # noqa: F401
        except ImportError:
            print("\nRadGraph: skipped (pip install radgraph==0.1.18)")
            return
        sub = sorted(texts[: args.radgraph_texts], key=len)  # as `evaluate` hands them to the annotator
        table(f"RadGraph, real size, {args.threads} threads", bench_radgraph(sub), len(sub), "reports/s")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
