"""What the ``evaluate`` command does, with its console output (cli.py only wires).

Results (the table, what was written) go to ``out``; progress, notes and warnings to ``err``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from llavarad_cli.console import safe
from llavarad_cli.errors import UserError
from llavarad_cli.evaluate.options import EvalOptions


def check_options(options: EvalOptions) -> None:
    """Everything a user can get wrong, checked before the (possibly hour-long) scoring starts."""
    names = set(options.metrics)
    if options.chexprompt_prompt is not None and "chexprompt" in names:
        from llavarad_cli.evaluate.chexprompt_prompt import Prompt

        Prompt.from_file(options.chexprompt_prompt)
    if options.radgraph_annotations is not None and "radgraph" in names \
            and not Path(options.radgraph_annotations).is_file():
        raise UserError(f"--radgraph-annotations {options.radgraph_annotations}: file not found")
    if options.device is not None and {"chexbert", "radgraph"} & names:
        from llavarad_cli.model.loading import pick_device

        pick_device(options.device)  # `gpu`, `cuda:7` on a 1-GPU box, ...: one line now, not a traceback mid-run


def evaluate_file(preds: Path, options: EvalOptions, out: Path | None, plot: bool, explicit: bool,
                  out_console: Console, err: Console) -> int:
    """Score ``preds``, write the outputs and print the table. Returns the exit code: 1 when a metric the user
    named (``explicit``) could not run; the default metric set skips such a metric with its reason."""
    from llavarad_cli.evaluate.records import load_pairs
    from llavarad_cli.evaluate.report import console_table, prepare_out_dir, write_outputs
    from llavarad_cli.evaluate.runner import evaluate_pairs

    check_options(options)
    pairs = load_pairs(preds)
    out = prepare_out_dir(out or preds.parent / "eval")
    with _progress_bars(err) as progress:
        result = evaluate_pairs(pairs, options, progress)
    written = write_outputs(result, out, preds, options, plot=plot)
    resamples = f", {options.bootstrap} bootstrap resamples" if options.bootstrap else ""
    out_console.print(console_table(result, f"{safe(preds.name)}: {result.n} reports{resamples}"))
    _print_notes(result, pairs, plot, err)
    out_console.print(f"wrote {safe(', '.join(p.name for p in written))} to {safe(out)}", highlight=False)
    if explicit and result.skipped:
        err.print(f"[red]not scored:[/] {safe(', '.join(result.skipped))}, asked for with --metrics "
                  "(the metrics that ran are written)", highlight=False, soft_wrap=True)
        return 1
    return 0


@contextmanager
def _progress_bars(err: Console):
    """A ``progress(label, total) -> advance(k)`` callback drawing rich bars on ``err``, removed at the end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bars:
        def progress(label, total):
            task = bars.add_task(label, total=total)
            return lambda k: bars.advance(task, k)

        yield progress


def _print_notes(result, pairs, plot: bool, err: Console) -> None:
    def warn(text: str) -> None:
        err.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)

    for name, reason in result.skipped.items():
        warn(f"{safe(name)} skipped: {safe(reason)}")
    if result.extra.get("empty_predictions"):
        warn(f"{result.extra['empty_predictions']} empty prediction(s) scored as they are")
    if result.extra.get("empty_references"):
        warn(f"{result.extra['empty_references']} empty reference(s) scored as they are")
    if result.extra.get("rouge_l_token_cap", {}).get("reports_cut"):
        cap = result.extra["rouge_l_token_cap"]
        warn(f"{cap['reports_cut']} pair(s) over {cap['max_tokens']:,} tokens cut to that for ROUGE-L")
    if pairs.no_reference:
        warn(f"{len(pairs.no_reference)} record(s) with a null reference left out, e.g. id "
             f"{safe(repr(pairs.no_reference[0]))} (listed in metrics.json)")
    if plot and not result.breakdowns:
        warn("--plot needs the chexbert metric; no plot written")
    unusable = result.extra.get("chexprompt", {}).get("unusable_ratings", 0)
    if unusable:
        warn(f"CheXprompt: {unusable} of {result.n} report(s) got no usable rating and are left out of its means; "
             "rerun the same command to ask again for those only (the rest is cached)")
