"""Writing the results: metrics.json, main.csv, breakdown_n/p.csv, per_report.jsonl, the console table, the plot."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from llavarad_cli.evaluate.conventions import CONVENTIONS
from llavarad_cli.evaluate.labels import CONDITIONS
from llavarad_cli.errors import UserError
from llavarad_cli.evaluate.runner import EvalResult
from llavarad_cli.versions import package_versions
from llavarad_cli.io_utils import atomic_write_json, atomic_write_text

#: The column order of the reference's main.csv, then what it did not have.
MAIN_ORDER = ["BLEU-1", "BLEU-4", "ROUGE-L", "Micro-F1-14", "Macro-F1-14", "Micro-F1-5", "Macro-F1-5",
              "Micro-F1-14+", "Macro-F1-14+", "Micro-F1-5+", "Macro-F1-5+", "F1-RadGraph", "ROUGE-2",
              "CheXprompt-significant", "CheXprompt-total"]


def ordered_scores(result: EvalResult):
    rank = {name: i for i, name in enumerate(MAIN_ORDER)}
    return sorted(result.scores, key=lambda s: rank.get(s.name, len(rank)))


def metrics_json(result: EvalResult, preds: Path, options) -> dict:
    return {
        "predictions": str(preds),
        "n": result.n,
        "bootstrap": {"resamples": options.bootstrap, "seed": options.seed, "confidence": 0.95},
        "metrics": {s.name: {"value": s.value, "ci_low": s.ci.low if s.ci else None,
                             "ci_high": s.ci.high if s.ci else None, "n": s.n} for s in ordered_scores(result)},
        "skipped": result.skipped,
        **result.extra,
        "conventions": CONVENTIONS,
        "versions": package_versions(),
    }


def main_csv(result: EvalResult) -> str:
    scores = ordered_scores(result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *[s.name for s in scores]])
    writer.writerow(["value", *[repr(s.value) for s in scores]])
    writer.writerow(["ci_low", *[repr(s.ci.low) if s.ci else "" for s in scores]])
    writer.writerow(["ci_high", *[repr(s.ci.high) if s.ci else "" for s in scores]])
    return buf.getvalue()


def breakdown_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", "f1-score", "precision", "recall", "support"])
    for row in sorted(CONDITIONS) + ["micro avg", "macro avg"]:
        r = report[row]
        writer.writerow([row, repr(r["f1-score"]), repr(r["precision"]), repr(r["recall"]), repr(r["support"])])
    return buf.getvalue()


#: Files a run writes only with some metrics or flags; one left by an earlier run in the same folder is removed.
OPTIONAL_OUTPUTS = ("breakdown_n.csv", "breakdown_p.csv", "per_observation_f1.png")


def prepare_out_dir(out: Path) -> Path:
    """Create the output folder before any scoring, so a bad --out fails in a second, not after an hour."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create this folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: this folder is not writable")
    return out


def write_outputs(result: EvalResult, out: Path, preds: Path, options, plot: bool = False) -> list[Path]:
    """Every file atomically; metrics.json last, listing the files of this run."""
    out = prepare_out_dir(out)
    written = []
    atomic_write_text(out / "main.csv", main_csv(result))
    written.append(out / "main.csv")
    for key in ("n", "p"):
        if key in result.breakdowns:
            atomic_write_text(out / f"breakdown_{key}.csv", breakdown_csv(result.breakdowns[key]))
            written.append(out / f"breakdown_{key}.csv")
    atomic_write_text(out / "per_report.jsonl",
                      "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.per_report))
    written.append(out / "per_report.jsonl")
    if plot and result.breakdowns:
        written.append(plot_breakdown(result.breakdowns, out / "per_observation_f1.png"))
    for name in OPTIONAL_OUTPUTS:  # a breakdown from an earlier run with CheXbert must not sit beside new metrics
        if out / name not in written:
            (out / name).unlink(missing_ok=True)
    written.insert(0, out / "metrics.json")
    atomic_write_json(out / "metrics.json", metrics_json(result, preds, options) | {"files": [p.name for p in written]})
    return written


def observation_labels(breakdowns: dict, names: list[str]) -> list[str]:
    """``Edema (n=12 / 15)``: each mapping's own support beside its bar (uncertain as negative / as positive);
    the uncertain-as-positive mapping counts more reference positives, so one ``n`` would be wrong for it."""
    keys = [k for k in ("n", "p") if k in breakdowns]
    return [f"{c} (n={' / '.join(str(int(breakdowns[k][c]['support'])) for k in keys)})" for c in names]


def plot_breakdown(breakdowns: dict, path: Path) -> Path:
    """Horizontal bars of per-observation F1, uncertain as negative and as positive side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted(CONDITIONS)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    for offset, key, label in ((-0.2, "n", "uncertain = negative"), (0.2, "p", "uncertain = positive (+)")):
        if key in breakdowns:
            ax.barh(y + offset, [breakdowns[key][c]["f1-score"] for c in names], height=0.4, label=label)
    ax.set_yticks(y, observation_labels(breakdowns, names))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (CheXbert labels of prediction vs reference)")
    ax.set_title("n = reference positives, uncertain as negative" + (" / as positive" if "p" in breakdowns else ""),
                 fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    from llavarad_cli.io_utils import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return path


def console_table(result: EvalResult, title: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    for s in ordered_scores(result):
        digits = 2 if s.name.startswith("BLEU") or s.name.startswith("CheXprompt") else 4
        ci = f"{s.ci.low:.{digits}f} - {s.ci.high:.{digits}f}" if s.ci else "-"
        table.add_row(s.name, f"{s.value:.{digits}f}", ci, str(s.n))
    for name, reason in result.skipped.items():
        table.add_row(name, "[yellow]skipped[/]", "", "")
    return table
