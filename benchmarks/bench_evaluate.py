"""Benchmark `llavarad evaluate`: lexical metrics with 500-resample CIs on 2,461 pairs, and CheXbert throughput.

Pairs come from real Open-I findings (tests/data/openi): reference = report i, prediction = report i+1, 2,461 of
them (the size of the MIMIC-CXR test set). Baseline for the lexical part = the paper's toolkit path: sacrebleu
``corpus_score(n_bootstrap=500)`` for BLEU-1 and BLEU-4 plus rouge-score's ``BootstrapAggregator(n_samples=500)``.
CheXbert: random weights of the real size (bert-base + 14 heads, built offline) and a WordPiece tokenizer trained
here on the same findings; sorted-length batching against file order. Nothing is downloaded.

    python benchmarks/bench_evaluate.py [--n 2461] [--chexbert-reports 512] [--batch-size 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the offline stand-ins for the scorer files live with the tests (they are not part of the package)
sys.path.insert(0, str(ROOT / "tests"))


def openi_pairs(n: int) -> tuple[list[str], list[str]]:
    rows = list(csv.DictReader((ROOT / "tests/data/openi/indiana_reports.csv").open(encoding="utf-8")))
    findings = [r["findings"].strip() for r in rows if r["findings"].strip()]
    refs = [findings[i % len(findings)] for i in range(n)]
    hyps = [findings[(i + 1) % len(findings)] for i in range(n)]
    return hyps, refs


def bench_lexical(hyps, refs, resamples: int) -> list[tuple[str, float]]:
    import numpy as np

    from llavarad_cli.evaluate.records import Pair
    from llavarad_cli.evaluate.runner import EvalOptions, evaluate_pairs

    pairs = [Pair(str(i), h, r) for i, (h, r) in enumerate(zip(hyps, refs))]
    import rouge_score.rouge_scorer  # noqa: F401  (pulls in nltk and scipy: ~1 s, paid once by both paths)
    import sacrebleu  # noqa: F401

    t0 = time.perf_counter()
    result = evaluate_pairs(pairs, EvalOptions(metrics=("bleu", "rouge"), bootstrap=resamples, seed=3))
    ours = time.perf_counter() - t0
    vals = {s.name: s for s in result.scores}

    from rouge_score import rouge_scorer, scoring
    from sacrebleu.metrics import BLEU

    t0 = time.perf_counter()
    np.random.seed(3)
    b4 = BLEU().corpus_score(hyps, [refs], n_bootstrap=resamples)
    b1 = BLEU(max_ngram_order=1).corpus_score(hyps, [refs], n_bootstrap=resamples)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    agg = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=resamples)
    for h, r in zip(hyps, refs):
        agg.add_scores(scorer.score(r, h))
    rl = agg.aggregate()["rougeL"].mid.fmeasure
    ref_time = time.perf_counter() - t0
    assert abs(vals["BLEU-4"].value - b4.score) < 1e-9 and abs(vals["BLEU-1"].value - b1.score) < 1e-9
    print(f"  values: BLEU-1 {vals['BLEU-1'].value:.2f} [{vals['BLEU-1'].ci.low:.2f}, {vals['BLEU-1'].ci.high:.2f}]"
          f"  BLEU-4 {vals['BLEU-4'].value:.2f} [{vals['BLEU-4'].ci.low:.2f}, {vals['BLEU-4'].ci.high:.2f}]"
          f"  ROUGE-L {vals['ROUGE-L'].value:.4f} [{vals['ROUGE-L'].ci.low:.4f}, {vals['ROUGE-L'].ci.high:.4f}]"
          f"  (reference toolkit: BLEU-4 {b4.score:.2f}, ROUGE-L mid {rl:.4f})")
    return [("lexical, llavarad evaluate (BLEU-1/4 + ROUGE-L, CIs)", ours),
            ("lexical, paper toolkit path (sacrebleu + BootstrapAggregator)", ref_time)]


def bench_chexbert(texts, batch_size: int) -> list[tuple[str, float, float]]:
    import torch
    from transformers import BertConfig

    import chexbert_fixtures as fixtures

    from llavarad_cli.evaluate import chexbert

    with tempfile.TemporaryDirectory() as tmp:
        tok = fixtures.wordpiece_tokenizer(texts, Path(tmp) / "tok", vocab_size=30522)
    torch.manual_seed(0)
    model = chexbert.build_labeler(BertConfig()).eval()  # bert-base-uncased shape, random weights
    lengths = [len(chexbert.encode(tok, t)) for t in texts]
    print(f"  CheXbert: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, {len(texts)} reports, "
          f"{sum(lengths) / len(lengths):.0f} tokens on average (max {max(lengths)}), batch {batch_size}")
    chexbert.label_texts(model, tok, texts[:batch_size], batch_size, "cpu")  # warm-up
    rows = []
    labels = {}
    for name, sort in (("CheXbert labelling, sorted by length", True), ("CheXbert labelling, file order", False)):
        t0 = time.perf_counter()
        labels[sort] = chexbert.label_texts(model, tok, texts, batch_size, "cpu", sort_by_length=sort)
        dt = time.perf_counter() - t0
        rows.append((name, dt, len(texts) / dt))
    assert (labels[True] == labels[False]).all()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2461)
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--chexbert-reports", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    hyps, refs = openi_pairs(args.n)
    print(f"{args.n} Open-I findings pairs, {args.resamples} bootstrap resamples, {args.threads} torch threads")
    lex = bench_lexical(hyps, refs, args.resamples)
    # distinct texts, as evaluate labels each distinct text once
    texts = list(dict.fromkeys(refs + hyps))[: args.chexbert_reports]
    cb = bench_chexbert(texts, args.batch_size)

    print(f"\n{'what':62s} {'wall s':>8s} {'reports/s':>10s}")
    for name, dt in lex:
        print(f"{name:62s} {dt:8.2f} {args.n / dt:10.0f}")
    for name, dt, rate in cb:
        print(f"{name:62s} {dt:8.2f} {rate:10.1f}")


if __name__ == "__main__":
    main()
