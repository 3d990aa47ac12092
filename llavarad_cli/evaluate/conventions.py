"""The conventions each metric follows, written once: metrics.json carries them, the README repeats them."""

from __future__ import annotations

CONVENTIONS = {
    "BLEU-1/BLEU-4": "sacrebleu corpus BLEU (max_ngram_order 1 / 4), 13a tokenizer, case-sensitive, exp smoothing, "
                     "one reference per report; scale 0-100 (the paper's).",
    "ROUGE-L/ROUGE-2": "rouge-score F-measure per report (default tokenizer: lower-case, alphanumeric tokens; no "
                       "stemmer), averaged over reports; scale 0-1. ROUGE-L's LCS is computed bit-parallel "
                       "(rapidfuzz), the same value; a report over rouge_l_token_cap.max_tokens tokens is cut to "
                       "that many for ROUGE-L and counted (reports_cut).",
    "paper figures": "paper_figures.ROUGE-L is ROUGE-L as the paper's script printed it: rouge-score's "
                     "BootstrapAggregator mid, i.e. the median of 500 bootstrap means drawn with NumPy's global "
                     "RNG seeded 3 (as when nothing else drew from it first); for comparison only, the metric "
                     "above is the mean over reports.",
    "F1-CheXbert": "CheXbert labeler (bert-base-uncased + 14 heads, chexbert.pth; eager attention, as the paper's "
                   "transformers 4.31 ran it) on predictions and references; "
                   "micro and macro F1 (sklearn, zero_division=0) over 14 observations and over 5 (Cardiomegaly, "
                   "Edema, Consolidation, Atelectasis, Pleural Effusion); uncertain counted as negative (the "
                   "headline columns) and as positive (the '+' columns); macro averages every observation, even one "
                   "without support; scale 0-1.",
    "F1-RadGraph": "original RadGraph model (radgraph.tar.gz, StanfordAIMI/RRG_scorers @ d97745aa; eager "
                   "attention in its BERT, as the paper's transformers 4.31 ran it), 'partial' "
                   "reward: per report a set of (entity tokens, label[, has-relation]) compared case-sensitively, "
                   "F1 per report, averaged; an empty (or whitespace-only) prediction or reference scores 0; "
                   "scale 0-1.",
    "CheXprompt": "LLM judge counting errors of 6 types (A-F), clinically significant and insignificant; reported "
                  "as mean significant errors per report and mean total (all 12 counts) per report over usable "
                  "ratings; lower is better.",
    "bootstrap": "N resamples of the reports with replacement (numpy default_rng(seed), the same resamples for "
                 "every metric); 95% interval = 2.5th and 97.5th percentiles of the resampled metric; the value "
                 "reported is always the metric on the full set (not a bootstrap mean or median). Intervals depend "
                 "on the order of the records.",
    "empty predictions": "scored as they are (no n-gram matches, ROUGE 0, RadGraph 0, CheXbert labels the empty "
                         "text) and counted in metrics.json.",
    "null references": "a record whose reference is null has no ground truth: it is left out of every metric and "
                       "counted (left_out_no_reference); an empty-string reference is scored as it is.",
}
