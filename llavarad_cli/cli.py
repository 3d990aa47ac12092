"""The `llavarad` command: one short function per subcommand — parse, load, call the library, print.

Heavy imports (torch, transformers, deepspeed) happen inside the commands so that `llavarad --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from llavarad_cli import __version__
from llavarad_cli.cli_app import App, err_console, user_errors
from llavarad_cli.console import safe
from llavarad_cli.errors import UserError
from llavarad_cli.evaluate.options import EvalOptions
from llavarad_cli.infer.settings import DEFAULT_BATCH_SIZE, GenerationSettings, ModelChoice
from llavarad_cli.model import export as export_defaults
from llavarad_cli.model.shapes import RELEASED_BASE

app = App(
    name="llavarad",
    help="Train, run and evaluate LLaVA-Rad-style chest X-ray findings models.\n\n"
    "Typical flow: prepare -> pretrain -> finetune -> infer -> merge-chunks -> evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
#: Results go to stdout (so they can be piped or redirected); progress, notes and warnings to stderr.
console = Console()  # err_console (stderr) comes from cli_app, which prints the error lines on it
GEN = GenerationSettings()
MODEL = ModelChoice()
EVAL = EvalOptions()
CHEXPROMPT = EVAL.chexprompt


def _version_callback(value: bool):
    if value:
        console.print(f"llavarad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
):
    pass


# --- prepare --------------------------------------------------------------------------------------------------

@app.command()
@user_errors
def prepare(
    out: Path = typer.Option(..., "--out", help="Output folder for train.json, dev.json, test.json and prepare-summary.json."),
    mimic_dir: Optional[Path] = typer.Option(None, "--mimic-dir", help="MIMIC-CXR-JPG 2.0.0 root (files/, metadata, split and optional chexpert CSVs)."),
    reports: Optional[Path] = typer.Option(None, "--reports", help="mimic-cxr-reports.zip or the folder it unpacks to (default: mimic-cxr-reports.zip in --mimic-dir, else s<study>.txt files beside the study folders)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Folder of the PhysioNet 'LLaVA-Rad MIMIC-CXR Annotations' JSON files; used instead of parsing reports."),
    openi_reports: Optional[Path] = typer.Option(None, "--openi-reports", help="Open-I indiana_reports.csv."),
    openi_projections: Optional[Path] = typer.Option(None, "--openi-projections", help="Open-I indiana_projections.csv."),
    openi_images: Optional[Path] = typer.Option(None, "--openi-images", help="Folder of Open-I images (CXR<uid>_IM-….png or the Kaggle names)."),
    split: Optional[str] = typer.Option(None, "--split", help="Open-I only: the split every study goes to (default: test)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=1, help="Also write resized copies (shortest side N, JPEG) under OUT/images/ and point records there."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes for the image step (default: all cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing JSON files in OUT."),
):
    """Build training/evaluation records from MIMIC-CXR-JPG + reports, the PhysioNet annotations, or Open-I."""
    from llavarad_cli.data.prepare import prepare as build, summary_table

    summary = build(out, image_size=image_size, workers=workers, overwrite=overwrite, console=err_console,
                    mimic_dir=mimic_dir, reports=reports, annotations=annotations, openi_reports=openi_reports,
                    openi_projections=openi_projections, openi_images=openi_images, split=split)
    console.print(summary_table(summary))
    files = ", ".join(summary["files"] + ["prepare-summary.json"])
    console.print(f"wrote {safe(files)} to {safe(str(out))}", highlight=False)
    if summary["images"]["root"]:
        console.print(f"image paths are relative to {safe(summary['images']['root'])}", highlight=False)


# --- training -------------------------------------------------------------------------------------------------

def _train_command(stage: str, spec: Optional[Path], overrides: List[str], dry_run: bool, print_spec: bool,
                   num_workers: Optional[int], merge: bool = False, trust_pickle: bool = False) -> None:
    from llavarad_cli import specs

    if print_spec:
        from llavarad_cli.spec_template import default_spec_yaml

        typer.echo(default_spec_yaml(stage))
        return
    if spec is None:
        raise UserError(f"`llavarad {stage}` needs a run spec", hint=f"`llavarad {stage} --print-spec > run.yaml` writes one")
    run_spec = specs.load_spec(spec, stage, overrides)
    from llavarad_cli.train.run import launch, plan_run, show_plan

    plan = plan_run(run_spec, num_workers, merge, trust_pickle=trust_pickle)
    if plan.topology.cpu and num_workers is None:
        err_console.print("[yellow]warning:[/] no GPU visible: training on 1 CPU worker (slow)", highlight=False)
    if dry_run:
        console.rule(f"[bold]{stage}[/]: resolved spec")
        typer.echo(specs.spec_to_yaml(run_spec))
        show_plan(plan, console)
        return
    summary = launch(plan, console)
    console.print(f"[green]{stage} finished[/]: {summary.get('steps')} steps; outputs in {safe(run_spec.output.dir)}",
                  highlight=False)


SPEC_ARG = typer.Argument(None, help="YAML run spec (`--print-spec` writes a commented default).", show_default=False)
SET_OPT = typer.Option([], "--set", help="Override one spec value, e.g. --set train.learning_rate=2e-4 (repeatable).")
DRY_OPT = typer.Option(False, "--dry-run", help="Validate the spec, print it resolved with the DeepSpeed config, launcher command and memory estimate, then stop.")
PRINT_OPT = typer.Option(False, "--print-spec", help="Print a complete commented default spec for this stage and exit.")
WORKERS_OPT = typer.Option(None, "--num-workers", min=1, help="Worker processes on a machine without GPUs (CPU/gloo); default 1.")
TRUST_PICKLE_TRAIN_OPT = typer.Option(False, "--trust-pickle", help="Allow .bin/.pt files (weights, a checkpoint to resume) that need arbitrary code to unpickle (only for files you trust).")


@app.command()
@user_errors
def pretrain(spec: Optional[Path] = SPEC_ARG, overrides: List[str] = SET_OPT, dry_run: bool = DRY_OPT,
             print_spec: bool = PRINT_OPT, num_workers: Optional[int] = WORKERS_OPT,
             trust_pickle: bool = TRUST_PICKLE_TRAIN_OPT):
    """Stage 1: align the projector (vision tower and LM frozen), on DeepSpeed workers."""
    _train_command("pretrain", spec, overrides, dry_run, print_spec, num_workers, trust_pickle=trust_pickle)


@app.command()
@user_errors
def finetune(spec: Optional[Path] = SPEC_ARG, overrides: List[str] = SET_OPT, dry_run: bool = DRY_OPT,
             print_spec: bool = PRINT_OPT, num_workers: Optional[int] = WORKERS_OPT,
             merge: bool = typer.Option(False, "--merge", help="Also write a merged standalone model (safetensors) at the end."),
             trust_pickle: bool = TRUST_PICKLE_TRAIN_OPT):
    """Stage 2: LoRA on every linear layer of the LM plus the projector, on DeepSpeed workers."""
    _train_command("finetune", spec, overrides, dry_run, print_spec, num_workers, merge, trust_pickle)


# --- inference ------------------------------------------------------------------------------------------------

@app.command()
@user_errors
def infer(
    image: Optional[Path] = typer.Option(None, "--image", help="One chest X-ray (JPEG, PNG or DICOM)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Reason for the exam (indication), put into the prompt."),
    query_file: Optional[Path] = typer.Option(None, "--query-file", help="Records JSON from `prepare` (or the PhysioNet annotation format)."),
    image_folder: Optional[Path] = typer.Option(None, "--image-folder", help="Folder the records' image paths are relative to."),
    output: Optional[Path] = typer.Option(None, "--output", help="Predictions JSONL (batch mode); rerunning resumes it."),
    model: str = typer.Option(MODEL.model, "--model", help="Released LLaVA-Rad layout or a llavarad checkpoint: hub id or local dir."),
    model_base: Optional[str] = typer.Option(None, "--model-base", help=f"Base LM: hub id or local dir (default: {RELEASED_BASE} for the released layout, the recorded base for a llavarad checkpoint)."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:N or cpu (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: fp16 on GPU, as the paper evaluated; fp32 on CPU)."),
    attn: str = typer.Option(MODEL.attn, "--attn", help="Attention kernel: sdpa, eager or flash_attention_2 (needs flash-attn)."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Reports per generate() call (length-sorted, left-padded)."),
    max_new_tokens: int = typer.Option(GEN.max_new_tokens, "--max-new-tokens", min=1, help="Tokens generated per report (the paper used 256)."),
    temperature: float = typer.Option(GEN.temperature, "--temperature", min=0.0, help="0 = greedy, as in the paper."),
    top_p: Optional[float] = typer.Option(GEN.top_p, "--top-p", min=0.0, max=1.0, help="Nucleus sampling (with --temperature > 0)."),
    num_beams: int = typer.Option(GEN.num_beams, "--num-beams", min=1, help="Beam search width."),
    seed: Optional[int] = typer.Option(GEN.seed, "--seed", min=0, help="Seed for sampling (--temperature > 0), so a run can be repeated; also given to every --gpus worker."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N records of --query-file (a quick look before the full run)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start --output again instead of resuming it (the old file is replaced in one step)."),
    num_chunks: int = typer.Option(1, "--num-chunks", min=1, help="Split the records into K contiguous chunks..."),
    chunk_idx: int = typer.Option(0, "--chunk-idx", min=0, help="...and process chunk i of them."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="Start one worker per GPU and merge their outputs at the end."),
    as_json: bool = typer.Option(False, "--json", help="Single image: print a JSON object with the prompt and findings."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow .bin/.pt files that need arbitrary code to unpickle (only for files you trust)."),
):
    """Write findings for one image (--image) or a whole test set (--query-file), batched and resumable."""
    from llavarad_cli.infer import commands

    choice = ModelChoice(model, model_base, device, dtype, attn, trust_pickle)
    settings = GenerationSettings(max_new_tokens, temperature, top_p, num_beams, seed)
    if image is not None and query_file is None:
        return commands.infer_single(image, reason, choice, settings, as_json, console, err_console)
    job = commands.BatchJob(query_file, image_folder, output, batch_size, limit, overwrite, num_chunks, chunk_idx)
    code = commands.infer_batch(job, choice, settings, gpus, image is not None, console, err_console)
    if code:
        raise typer.Exit(code)


@app.command()
@user_errors
def export(
    model: str = typer.Argument(..., help="What `infer --model` takes: the released layout or a llavarad checkpoint (hub id or local dir)."),
    out: Path = typer.Argument(..., help="Folder to write: loads with transformers alone (LlavaForConditionalGeneration)."),
    model_base: Optional[str] = typer.Option(None, "--model-base", help="Base LM, as for `infer` (default: the released default or the recorded base)."),
    dtype: str = typer.Option(export_defaults.DEFAULT_DTYPE, "--dtype", help=f"{', '.join(export_defaults.DTYPE_CHOICES)} weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow .bin/.pt files that need arbitrary code to unpickle (only for files you trust)."),
):
    """Write MODEL as a plain transformers LLaVA folder (LoRA merged, safetensors, processor, chat template, model card)."""
    from llavarad_cli.model.export import export_model

    result = export_model(model, out, model_base, dtype, overwrite, trust_pickle,
                          status=lambda message: err_console.print(safe(message), style="dim", highlight=False))
    console.print(f"wrote {safe(str(result.out))}: {result.parameters:,} parameters, image token id "
                  f"{result.image_token_id} x {result.num_image_tokens} positions, files {safe(', '.join(result.files))}",
                  highlight=False)


@app.command("merge-chunks")
@user_errors
def merge_chunks(
    files: List[Path] = typer.Argument(..., help="Chunk prediction files, e.g. preds_*.jsonl (merged in natural order)."),
    output: Path = typer.Option(..., "--output", help="Merged predictions JSONL."),
    query_file: Optional[Path] = typer.Option(None, "--query-file", help="Records JSON: list the ids no chunk predicted."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Exit 0 even when ids are missing."),
):
    """Join per-GPU prediction files, refusing conflicting duplicates and reporting bad lines and gaps.

    Exit code 0 only when the merged file is complete and clean (or --allow-missing), else 1.
    """
    from llavarad_cli.infer.commands import report_merge
    from llavarad_cli.infer.queries import read_queries

    query_ids = [q.id for q in read_queries(query_file).queries] if query_file else None
    code = report_merge(files, output, query_ids, allow_missing, console, err_console)
    if code:
        raise typer.Exit(code)


# --- evaluation -----------------------------------------------------------------------------------------------

@app.command()
@user_errors
def evaluate(
    preds: Path = typer.Argument(..., help="Predictions JSONL from `infer` (id, prediction, reference per line)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help=f"Comma list of bleu, rouge, rouge2, chexbert, radgraph, chexprompt (default: {','.join(EVAL.metrics)}). A metric named here that cannot run is an error; one of the default set is skipped, with its reason."),
    bootstrap: int = typer.Option(EVAL.bootstrap, "--bootstrap", min=0, help="Bootstrap resamples for 95% percentile intervals, the same resamples for every metric (0 = none)."),
    seed: int = typer.Option(EVAL.seed, "--seed", help="Seed of the bootstrap (numpy default_rng)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for metrics.json, main.csv, breakdown_n/p.csv and per_report.jsonl (default: PREDS_DIR/eval)."),
    plot: bool = typer.Option(False, "--plot", help="Also write per_observation_f1.png (needs chexbert)."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:N or cpu for CheXbert/RadGraph (default: cuda when available)."),
    chexbert_weights: Optional[Path] = typer.Option(None, "--chexbert-weights", help="Local chexbert.pth (default: StanfordAIMI/RRG_scorers via the hub cache)."),
    chexbert_tokenizer: Optional[str] = typer.Option(None, "--chexbert-tokenizer", help="bert-base-uncased tokenizer: local folder or hub id (default: bert-base-uncased)."),
    chexbert_batch_size: int = typer.Option(EVAL.chexbert_batch_size, "--chexbert-batch-size", min=1, help="Most reports per CheXbert forward pass (length-sorted; also at most 1,024 padded tokens on CPU, 32,768 on GPU)."),
    radgraph_weights: Optional[Path] = typer.Option(None, "--radgraph-weights", help="Folder with radgraph.tar.gz (StanfordAIMI/RRG_scorers) and the BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext/ tokenizer folder it names, or the archive itself (default: the hub or its cache); needs the radgraph package."),
    radgraph_annotations: Optional[Path] = typer.Option(None, "--radgraph-annotations", help="JSONL of precomputed RadGraph annotations {text, annotation}, used instead of running the model."),
    cp_base_url: str = typer.Option(CHEXPROMPT.base_url, "--chexprompt-base-url", envvar="LLAVARAD_CHEXPROMPT_BASE_URL", help="OpenAI-compatible base URL (…/v1), or the Azure resource URL with --chexprompt-azure-deployment."),
    cp_model: str = typer.Option(CHEXPROMPT.model, "--chexprompt-model", envvar="LLAVARAD_CHEXPROMPT_MODEL", help="Chat model name (GPT-4 Turbo as in the paper)."),
    cp_key_env: str = typer.Option(CHEXPROMPT.api_key_env, "--chexprompt-api-key-env", help="Environment variable that holds the API key (not the key itself)."),
    cp_deployment: Optional[str] = typer.Option(None, "--chexprompt-azure-deployment", envvar="LLAVARAD_CHEXPROMPT_AZURE_DEPLOYMENT", help="Azure OpenAI deployment name (switches to the Azure URL and api-key header)."),
    cp_api_version: str = typer.Option(CHEXPROMPT.api_version, "--chexprompt-api-version", envvar="OPENAI_API_VERSION", help="Azure OpenAI api-version."),
    cp_rpm: float = typer.Option(CHEXPROMPT.requests_per_minute, "--chexprompt-rpm", min=0.0, help="Requests per minute at most (0 = no limit)."),
    cp_workers: int = typer.Option(CHEXPROMPT.workers, "--chexprompt-workers", min=1, help="Requests in flight at once."),
    cp_retries: int = typer.Option(CHEXPROMPT.max_retries, "--chexprompt-retries", min=0, help="Retries per request on 429/5xx/network errors, with exponential backoff."),
    cp_cache: Optional[Path] = typer.Option(None, "--chexprompt-cache", help=f"Folder of the on-disk rating cache (default: {CHEXPROMPT.cache_dir})."),
    cp_prompt: Optional[Path] = typer.Option(None, "--chexprompt-prompt", help='JSON {"system": ..., "user": ...{reference}...{candidate}...} replacing the built-in prompt, which is our own wording (not the paper\'s): pass the original CheXprompt prompt here for parity.'),
):
    """Score predictions with BLEU-1/4, ROUGE-L, F1-CheXbert, F1-RadGraph (paper conventions) and CheXprompt.

    BLEU: sacrebleu corpus BLEU, 13a, 0-100. ROUGE: rouge-score F per report, no stemmer, averaged, 0-1.
    F1-CheXbert: micro/macro over 14 and 5 observations, uncertain as negative (and as positive in the "+"
    columns). F1-RadGraph: original RadGraph model, partial reward, averaged. Every value is the metric on the
    full set; intervals are bootstrap percentiles. Metrics of the default set whose weights are missing are
    skipped, with the file they need; the others still run.
    """
    from dataclasses import replace

    from llavarad_cli.evaluate.commands import evaluate_file
    from llavarad_cli.evaluate.runner import parse_metrics

    chexprompt = replace(CHEXPROMPT, base_url=cp_base_url, model=cp_model, api_key_env=cp_key_env,
                         azure_deployment=cp_deployment, api_version=cp_api_version, requests_per_minute=cp_rpm,
                         workers=cp_workers, max_retries=cp_retries, cache_dir=cp_cache or CHEXPROMPT.cache_dir)
    options = EvalOptions(metrics=parse_metrics(metrics) if metrics else EVAL.metrics, bootstrap=bootstrap, seed=seed, device=device,
                          chexbert_weights=chexbert_weights, chexbert_tokenizer=chexbert_tokenizer,
                          chexbert_batch_size=chexbert_batch_size, radgraph_weights=radgraph_weights,
                          radgraph_annotations=radgraph_annotations, chexprompt=chexprompt, chexprompt_prompt=cp_prompt)
    code = evaluate_file(preds, options, out, plot, explicit=metrics is not None,
                         out_console=console, err=err_console)
    if code:
        raise typer.Exit(code)


# --- doctor ---------------------------------------------------------------------------------------------------

@app.command()
@user_errors
def doctor(
    no_hub: bool = typer.Option(False, "--no-hub", help="Do not try to reach the Hugging Face hub."),
):
    """Report versions, GPUs and memory, flash-attn/bf16, hub reachability and the HF cache."""
    from rich.table import Table

    from llavarad_cli.doctor import collect

    table = Table(title=f"llavarad {__version__} environment", show_header=True)
    table.add_column("item", style="bold")
    table.add_column("value")
    for key, value in collect(check_hub=not no_hub):
        table.add_row(key, safe(value))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
