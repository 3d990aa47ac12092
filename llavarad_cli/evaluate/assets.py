"""Where the model-based metrics get their files: a local path, else the Hugging Face hub (or its cache).

When neither works the metric is skipped, never faked: ``MetricSkipped`` carries the exact file that is needed and
how to provide it, and the other metrics still run.
"""

from __future__ import annotations

from pathlib import Path

SCORERS_REPO = "StanfordAIMI/RRG_scorers"
#: The hub revision LLaVA-Rad pinned for radgraph.tar.gz.
RADGRAPH_REVISION = "d97745aa136e5beb927da7e768e99de6ae807902"
CHEXBERT_TOKENIZER = "bert-base-uncased"


class MetricSkipped(Exception):
    """A metric cannot run here; the message says what file it needs and how to provide it."""


def hub_file(filename: str, revision: str | None, flag: str) -> Path:
    """A file from StanfordAIMI/RRG_scorers via the hub cache (honours HF_HUB_OFFLINE)."""
    try:
        from huggingface_hub import hf_hub_download

        from llavarad_cli.model.weights import offline_if_unreachable

        offline_if_unreachable()  # no network: the cache at once, instead of a minute of retries
        return Path(hf_hub_download(SCORERS_REPO, filename, revision=revision))
    except Exception as exc:  # offline, no cache, gated, network down: all mean "not available here"
        pin = f" --revision {revision}" if revision else ""
        raise MetricSkipped(
            f"needs {filename} from {SCORERS_REPO} and could not get it ({type(exc).__name__}); download it with "
            f"`hf download {SCORERS_REPO} {filename}{pin} --local-dir DIR` and pass {flag} DIR/{filename}"
        ) from None


def chexbert_weights(local: Path | None) -> Path:
    if local is not None:
        local = Path(local)
        if local.is_dir():
            local = local / "chexbert.pth"
        if not local.is_file():
            raise MetricSkipped(f"--chexbert-weights {local}: file not found (needs chexbert.pth from {SCORERS_REPO})")
        return local
    return hub_file("chexbert.pth", None, "--chexbert-weights")


def chexbert_tokenizer(source: str | None):
    """The bert-base-uncased WordPiece tokenizer: its vocab.txt (or a folder holding it), else a hub id."""
    from transformers import AutoTokenizer, BertTokenizer

    source = source or CHEXBERT_TOKENIZER
    local = Path(source)
    vocab = local / "vocab.txt" if local.is_dir() else local
    if vocab.is_file() and vocab.suffix == ".txt":
        # vocab.txt is all bert-base-uncased's tokenizer is: lower-casing WordPiece, [CLS]/[SEP]/[PAD]=0
        return BertTokenizer(vocab=str(vocab), do_lower_case=True)
    try:
        from llavarad_cli.model.weights import offline_if_unreachable

        offline_if_unreachable()
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise MetricSkipped(
            f"needs the {CHEXBERT_TOKENIZER} tokenizer (vocab.txt) and could not load {source!r} "
            f"({type(exc).__name__}); save it with `hf download {CHEXBERT_TOKENIZER} vocab.txt --local-dir DIR` and "
            f"pass --chexbert-tokenizer DIR"
        ) from None


#: The BERT whose config and tokenizer radgraph.tar.gz's config.json names (its weights are inside weights.th).
RADGRAPH_BERT = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext"


def radgraph_howto(dir_: str = "radgraph") -> str:
    """The commands that put every file the RadGraph model reads into one folder."""
    short = RADGRAPH_BERT.split("/")[-1]
    return (f"`hf download {SCORERS_REPO} radgraph.tar.gz --revision {RADGRAPH_REVISION} --local-dir {dir_}` and "
            f"`hf download {RADGRAPH_BERT} config.json vocab.txt tokenizer_config.json --local-dir {dir_}/{short}`, "
            f"then pass --radgraph-weights {dir_}")


def radgraph_archive(local: Path | None) -> Path:
    """radgraph.tar.gz, or a folder holding it or its unpacked contents (config.json, weights.th, vocabulary/).
    The BERT tokenizer files the archive names are looked for beside it (radgraph_model.find_files)."""
    if local is not None:
        local = Path(local)
        if local.is_dir() and (local / "radgraph.tar.gz").is_file():
            return local / "radgraph.tar.gz"
        if local.is_file() or (local.is_dir() and (local / "weights.th").is_file()):
            return local
        raise MetricSkipped(f"--radgraph-weights {local}: no radgraph.tar.gz (or its unpacked config.json, "
                            f"weights.th, vocabulary/) there; get the files with {radgraph_howto()}")
    try:
        return hub_file("radgraph.tar.gz", RADGRAPH_REVISION, "--radgraph-weights")
    except MetricSkipped:
        raise MetricSkipped(f"needs radgraph.tar.gz from {SCORERS_REPO} (revision {RADGRAPH_REVISION[:8]}) and the "
                            f"{RADGRAPH_BERT} tokenizer files; not found locally or in the hub cache; get them with "
                            f"{radgraph_howto()}") from None
