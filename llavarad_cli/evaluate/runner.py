"""Score a predictions file: each metric from per-report statistics, one bootstrap for all, skips reported.

``evaluate_pairs`` is the library entry point; the CLI only parses options and prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from llavarad_cli.evaluate import lexical
from llavarad_cli.evaluate.assets import MetricSkipped
from llavarad_cli.evaluate.bootstrap import Score, percentile_interval, resample_counts
from llavarad_cli.evaluate.options import DEFAULT_METRICS, METRICS, EvalOptions  # noqa: F401 (re-exported)
from llavarad_cli.evaluate.records import Pair, is_empty
from llavarad_cli.errors import UserError


@dataclass
class EvalResult:
    n: int
    scores: list[Score]
    per_report: list[dict]
    breakdowns: dict = field(default_factory=dict)        # "n"/"p" -> classification report (14 observations)
    skipped: dict = field(default_factory=dict)           # metric -> reason
    extra: dict = field(default_factory=dict)             # counts worth reporting (empty predictions, ...)


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}",
                        hint=f"choose from {', '.join(METRICS)}")
    return names


def evaluate_pairs(pairs: list[Pair], options: EvalOptions, progress=None) -> EvalResult:
    """``progress(label, total)`` returns an ``advance(k)`` callback; the CLI passes a rich one."""
    progress = progress or (lambda label, total: (lambda k: None))
    hyps = [p.prediction for p in pairs]
    refs = [p.reference for p in pairs]
    n = len(pairs)
    counts = resample_counts(n, options.bootstrap, options.seed) if options.bootstrap > 0 else None
    result = EvalResult(n=n, scores=[], per_report=[{"id": p.id} for p in pairs])
    result.extra["empty_predictions"] = sum(is_empty(h) for h in hyps)
    result.extra["empty_references"] = sum(is_empty(r) for r in refs)
    no_reference = getattr(pairs, "no_reference", [])
    result.extra["left_out_no_reference"] = {"count": len(no_reference), "ids": no_reference[:20]}
    made_with = pairs.made_with() if hasattr(pairs, "made_with") else {}
    if made_with:
        result.extra["predictions_made_with"] = made_with

    def add(name: str, point: float, resampled, n_used: int = n):
        ci = percentile_interval(resampled) if resampled is not None else None
        result.scores.append(Score(name, float(point), ci, n_used))

    def mean_score(name: str, values: np.ndarray):
        valid = ~np.isnan(values)
        if not valid.any():
            result.skipped[name] = "no usable per-report value"
            return
        point = float(values[valid].mean())
        resampled = None
        if counts is not None:
            c = counts[:, valid]
            w = c.sum(axis=1)
            resampled = np.divide(c @ values[valid], w, out=np.full(len(w), np.nan), where=w > 0)
            resampled = resampled[~np.isnan(resampled)]
        add(name, point, resampled, int(valid.sum()))

    if "bleu" in options.metrics:
        stats = lexical.bleu_stats(hyps, refs)
        for order in (1, 4):
            add(f"BLEU-{order}", *lexical.bleu_scores(stats, order, counts))
        for row, s in zip(result.per_report, stats):
            row["bleu_counts"] = {"hyp_len": int(s[0]), "ref_len": int(s[1]),
                                  "matches": s[2:6].tolist(), "totals": s[6:10].tolist()}
    for key, kind, name in (("rouge", "rougeL", "ROUGE-L"), ("rouge2", "rouge2", "ROUGE-2")):
        if key in options.metrics:
            if kind == "rougeL":
                f, cut = lexical.rouge_l(hyps, refs)
                result.extra["rouge_l_token_cap"] = {"max_tokens": lexical.ROUGE_L_MAX_TOKENS, "reports_cut": cut}
                if n:
                    result.extra.setdefault("paper_figures", {})["ROUGE-L"] = lexical.paper_rouge_median(f)
            else:
                f = lexical.rouge_f(hyps, refs, kind)
            mean_score(name, f)
            for row, v in zip(result.per_report, f):
                row[name] = float(v)
    if "chexbert" in options.metrics:
        _run_guarded(result, "F1-CheXbert", lambda: _chexbert(hyps, refs, options, counts, result, progress))
    if "radgraph" in options.metrics:
        _run_guarded(result, "F1-RadGraph", lambda: _radgraph(hyps, refs, options, result, mean_score, progress))
    if "chexprompt" in options.metrics:
        _run_guarded(result, "CheXprompt", lambda: _chexprompt(hyps, refs, options, result, mean_score, progress))
    return result


def _run_guarded(result: EvalResult, name: str, fn) -> None:
    try:
        fn()
    except MetricSkipped as exc:
        result.skipped[name] = str(exc)


def _chexbert(hyps, refs, options, counts, result, progress):
    from llavarad_cli.evaluate import assets, chexbert
    from llavarad_cli.evaluate.labels import CLASS_NAMES, CONDITIONS, chexbert_scores

    weights = assets.chexbert_weights(options.chexbert_weights)
    tokenizer = assets.chexbert_tokenizer(options.chexbert_tokenizer)
    model = chexbert.build_labeler(chexbert.labeler_config(weights))
    chexbert.load_state(model, weights)
    texts = list(dict.fromkeys(hyps + refs))  # label each distinct text once
    advance = progress("CheXbert labelling", len(texts))
    labels = chexbert.label_texts(model, tokenizer, texts, options.chexbert_batch_size, options.device,
                                  progress=advance)
    by_text = dict(zip(texts, labels))
    hyp_labels = np.stack([by_text[h] for h in hyps])
    ref_labels = np.stack([by_text[r] for r in refs])
    values, reports = chexbert_scores(hyp_labels, ref_labels, counts)
    for name, (point, resampled) in values.items():
        result.scores.append(Score(name, point, percentile_interval(resampled) if resampled is not None else None,
                                   len(hyps)))
    result.breakdowns = reports
    for row, h, r in zip(result.per_report, hyp_labels, ref_labels):
        row["chexbert_prediction"] = {c: CLASS_NAMES[int(v)] for c, v in zip(CONDITIONS, h) if v}
        row["chexbert_reference"] = {c: CLASS_NAMES[int(v)] for c, v in zip(CONDITIONS, r) if v}


def _radgraph(hyps, refs, options, result, mean_score, progress):
    from llavarad_cli.evaluate import assets, radgraph

    if options.radgraph_annotations is not None:
        annotate = radgraph.file_annotator(radgraph.load_annotation_file(options.radgraph_annotations))
        result.extra["radgraph_source"] = f"annotations file {options.radgraph_annotations}"
    else:
        radgraph.require_package()
        archive = assets.radgraph_archive(options.radgraph_weights)
        annotate = radgraph.package_annotator(archive, options.device)
        result.extra["radgraph_source"] = f"radgraph package on {archive}"
    distinct = len(set(h for h in hyps if not is_empty(h)) | set(r for r in refs if not is_empty(r)))
    rewards, _, _ = radgraph.radgraph_rewards(hyps, refs, annotate, progress("RadGraph", distinct))
    mean_score("F1-RadGraph", rewards)
    for row, v in zip(result.per_report, rewards):
        row["F1-RadGraph"] = float(v)


def _chexprompt(hyps, refs, options, result, mean_score, progress):
    from llavarad_cli.evaluate.chexprompt import error_counts, rate_pairs
    from llavarad_cli.evaluate.chexprompt_prompt import Prompt

    prompt = Prompt.from_file(options.chexprompt_prompt) if options.chexprompt_prompt else Prompt()
    ratings, stats = rate_pairs(refs, hyps, options.chexprompt, prompt, progress("CheXprompt", len(hyps)))
    result.extra["chexprompt"] = stats | {"unusable_ratings": sum(r is None for r in ratings),
                                          "model": options.chexprompt.azure_deployment or options.chexprompt.model,
                                          "prompt": str(options.chexprompt_prompt or "built-in (re-worded)")}
    pairs = np.array([error_counts(r) for r in ratings], dtype=np.float64).reshape(len(ratings), 2)
    mean_score("CheXprompt-significant", pairs[:, 0])
    mean_score("CheXprompt-total", pairs[:, 1])
    for row, rating in zip(result.per_report, ratings):
        row["chexprompt"] = rating
