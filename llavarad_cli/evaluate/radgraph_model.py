"""The original RadGraph model (DyGIE++ over PubMedBERT, ``radgraph.tar.gz``), run offline on local files.

Built from the ``radgraph`` package's own pieces (its vendored allennlp + dygie: vocabulary, reader, DyGIE model,
output conversion), not through its ``RadGraph`` class, because that class downloads on a cache miss, prints, and
hands the BERT name from the archive's config.json straight to ``from_pretrained`` (a hub look-up). Here every
file is resolved first, locally or from the hub cache, and the model code only ever sees local folders.

Files the model needs (what ``RadGraph(model_type="radgraph")`` loads):
- ``radgraph.tar.gz`` from StanfordAIMI/RRG_scorers: ``config.json`` (allennlp-style), ``weights.th`` (the whole
  model, BERT included), ``vocabulary/`` (entity and relation label namespaces);
- the config and tokenizer of the BERT named in that config.json (``config.json``, ``vocab.txt``,
  ``tokenizer_config.json``; the BERT weights are not read: ``weights.th`` holds them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from llavarad_cli.evaluate.assets import SCORERS_REPO, MetricSkipped, radgraph_howto
from llavarad_cli.evaluate.attention import use_paper_attention

#: The BERT files read from the folder named in the archive's config.json (no weights: weights.th has them).
BERT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json")
#: The parts of config["model"] that are training-time settings, not DyGIE constructor arguments.
_NOT_MODEL_ARGS = ("type", "embedder", "initializer", "module_initializer")


@dataclass
class RadGraphFiles:
    model_dir: Path  # the unpacked archive: config.json, weights.th, vocabulary/
    bert_dir: Path   # config.json + vocab.txt (+ tokenizer_config.json) of the BERT the config names


def bert_name(model_dir: Path) -> str:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config["dataset_reader"]["token_indexers"]["bert"]["model_name"]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llavarad" / "radgraph"


def unpack(archive: Path) -> Path:
    """The unpacked model folder: ``archive`` itself when it is a folder, else a cached extraction of it (keyed by
    path, size and time, written to a temporary folder and renamed, so a killed run never leaves half a model)."""
    archive = Path(archive)
    if archive.is_dir():
        return archive
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = _cache_root() / key
    if (target / "weights.th").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # the "data" filter refuses absolute paths and links out of the folder (Python >= 3.10.12)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(path=tmp, **kwargs)
        inner = tmp if (tmp / "weights.th").is_file() else next((p.parent for p in tmp.rglob("weights.th")), None)
        if inner is None:
            raise MetricSkipped(f"{archive}: no weights.th inside; expected radgraph.tar.gz from {SCORERS_REPO}")
        try:
            inner.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / "weights.th").is_file():
                raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise MetricSkipped(f"{archive}: cannot unpack ({type(exc).__name__}: {exc}); expected radgraph.tar.gz "
                            f"from {SCORERS_REPO}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _has_bert_files(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "vocab.txt").is_file()


def resolve_bert(name: str, search: Sequence[Path], flag_dir: str | None = None) -> Path:
    """A local folder with the BERT config + tokenizer the archive names: ``<search>/<last part of the name>`` or
    ``<search>/<full name>``, else the hub (or its cache; honours HF_HUB_OFFLINE), else a skip with the command."""
    short = name.rstrip("/").split("/")[-1]
    as_path = Path(name)
    candidates = [as_path] if as_path.is_absolute() else []
    for base in search:
        candidates += [Path(base) / short, Path(base) / name]
    for folder in candidates:
        if _has_bert_files(folder):
            return folder
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, allow_patterns=list(BERT_FILES)))
        if _has_bert_files(folder):
            return folder
        problem = "the download has no config.json/vocab.txt"
    except Exception as exc:  # offline, no cache, network down: all mean "not available here"
        problem = type(exc).__name__
    if flag_dir is None:  # no user folder to add to (the archive came from the hub cache): say how to make one
        howto = radgraph_howto()
    else:
        howto = (f"`hf download {name} {' '.join(BERT_FILES)} --local-dir {flag_dir}/{short}` and pass "
                 f"--radgraph-weights {flag_dir} (the folder holding radgraph.tar.gz)")
    raise MetricSkipped(f"needs the tokenizer and config of {name} (named in radgraph.tar.gz's config.json) and "
                        f"could not get them ({problem}); get them with {howto}")


def find_files(archive: Path) -> RadGraphFiles:
    """Unpack the archive and find its BERT: beside the archive, inside the unpacked folder, or from the hub."""
    archive = Path(archive)
    if archive.is_dir() and not (archive / "weights.th").exists() and (archive / "radgraph.tar.gz").is_file():
        archive = archive / "radgraph.tar.gz"
    model_dir = unpack(archive)
    for needed in ("config.json", "weights.th", "vocabulary"):
        if not (model_dir / needed).exists():
            raise MetricSkipped(f"{model_dir}: no {needed}; expected the contents of radgraph.tar.gz from "
                                f"{SCORERS_REPO}")
    folder = archive if archive.is_dir() else archive.parent
    return RadGraphFiles(model_dir, resolve_bert(bert_name(model_dir), [folder, model_dir],
                                                 None if _in_hub_cache(folder) else str(folder)))


def _in_hub_cache(path: Path) -> bool:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).resolve() in [path.resolve(), *path.resolve().parents]


def load_vocabulary(folder: Path):
    """allennlp's ``Vocabulary.from_files`` without its lock file, so a read-only model folder works."""
    from radgraph.allennlp.common.util import namespace_match
    from radgraph.allennlp.data import Vocabulary

    folder = Path(folder)
    non_padded = [line.strip() for line in (folder / "non_padded_namespaces.txt").read_text("utf-8").splitlines()]
    vocab = Vocabulary(non_padded_namespaces=non_padded)
    for path in sorted(folder.glob("*.txt")):
        if path.name == "non_padded_namespaces.txt":
            continue
        namespace = path.name[:-len(".txt")]
        padded = not any(namespace_match(pattern, namespace) for pattern in non_padded)
        vocab.set_from_file(str(path), padded, namespace=namespace)
    return vocab


def dataset_name(vocab, where: Path) -> str:
    """The reader tags documents with a dataset name; the label namespaces are "<dataset>__ner_labels" etc."""
    ner = [ns for ns in vocab.get_namespaces() if ns.endswith("__ner_labels")]
    if len(ner) != 1:
        raise MetricSkipped(f"{where}/vocabulary: expected one '<dataset>__ner_labels' namespace, "
                            f"found {ner or 'none'}")
    return ner[0][:-len("__ner_labels")]


def _encode_plus(self, text, text_pair=None, **kwargs):
    return self(text, text_pair, **kwargs)


def _build_inputs_with_special_tokens(self, ids_0, ids_1=None):
    # the special tokens this tokenizer's own post-processor puts around "a" (and "b"), put around the given ids
    probe = self("a", "b" if ids_1 is not None else None, add_special_tokens=True)["input_ids"]
    a = self("a", add_special_tokens=False)["input_ids"]
    start = probe.index(a[0])
    out = probe[:start] + list(ids_0)
    rest = probe[start + len(a):]
    if ids_1 is not None:
        b = self("b", add_special_tokens=False)["input_ids"]
        middle = rest.index(b[0])
        out += rest[:middle] + list(ids_1)
        rest = rest[middle + len(b):]
    return out + rest


#: transformers 4 methods the vendored allennlp calls that transformers 5 tokenizers no longer have
_V4_METHODS = {"encode_plus": _encode_plus, "build_inputs_with_special_tokens": _build_inputs_with_special_tokens}


def provide_tokenizer(bert_dir: Path) -> None:
    """Put the BERT tokenizer where the vendored allennlp looks it up, with the two calls it makes that
    transformers 5 removed: ``encode_plus`` (the v4 name of ``__call__``) and ``build_inputs_with_special_tokens``.

    allennlp fetches tokenizers through ``cached_transformers.get_tokenizer(name, use_fast=True)``, which returns
    the entry of its cache when there is one; filling that entry for our local folder is the package's own reuse
    path, so no package code is replaced and nothing else in the process changes."""
    from radgraph.allennlp.common import cached_transformers
    from transformers import AutoTokenizer

    name = str(bert_dir)
    key = (name, frozenset({"use_fast": True}.items()))
    if key in cached_transformers._tokenizer_cache:
        return
    base = type(AutoTokenizer.from_pretrained(name, use_fast=True))
    missing = {name: fn for name, fn in _V4_METHODS.items() if not hasattr(base, name)}
    compat = type(base.__name__, (base,), missing) if missing else base
    cached_transformers._tokenizer_cache[key] = compat.from_pretrained(name, use_fast=True)


def build(config: dict, vocab, bert_dir: Path):
    """(reader, DyGIE model) as ``RadGraph.__init__`` builds them, with the BERT taken from a local folder."""
    from radgraph.allennlp.data import token_indexers
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.data.dataset_readers.dygie import DyGIEReader
    from radgraph.dygie.models.dygie import DyGIE

    bert = str(bert_dir)
    provide_tokenizer(bert_dir)
    indexer_cfg = config["dataset_reader"]["token_indexers"]["bert"]
    embedder_cfg = config["model"]["embedder"]["token_embedders"]["bert"]
    reader = DyGIEReader(
        max_span_width=config["dataset_reader"]["max_span_width"],
        token_indexers={"bert": token_indexers.PretrainedTransformerMismatchedIndexer(
            model_name=bert, max_length=indexer_cfg.get("max_length"))})
    bert_embedder = token_embedders.PretrainedTransformerMismatchedEmbedder(
        model_name=bert, max_length=embedder_cfg.get("max_length"))
    embedder = text_field_embedders.BasicTextFieldEmbedder({"bert": bert_embedder})
    model_args = {k: v for k, v in config["model"].items() if k not in _NOT_MODEL_ARGS}
    model = DyGIE(vocab=vocab, embedder=embedder, **model_args)
    use_paper_attention(model)
    return reader, model


#: Reports whose BERT encodings share one forward pass, at most (reports of one wordpiece count; see
#: RadGraphAnnotator).
BATCH_REPORTS = 32


def _tokens(text: str) -> list[str]:
    from radgraph.utils import preprocess_reports

    return preprocess_reports([text or "None"], "radgraph")[0]["sentences"][0]  # the package's "radgraph" split


class _GivenEmbeddings(torch.nn.Module):
    """Stands in for DyGIE's text embedder during one report's pass: hands back that report's BERT word
    embeddings, computed beforehand in a shared pass, instead of running BERT again."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, text, num_wrapping_dims: int = 0) -> torch.Tensor:
        return self.embeddings


class RadGraphAnnotator:
    """Annotates reports exactly as RadGraph's ``RadGraph`` does, one document per report: same tokenisation
    (model_type "radgraph"), same model, same output (``{"text", "entities": {...}}``), with BERT shared.

    BERT, three quarters of the work, encodes several reports in one pass: reports with the same number of
    wordpieces go in as the sentences of one document (each its own row, so nothing is padded and each report's
    arithmetic is what it is alone: on CPU its word embeddings come out bit for bit equal; the benchmark and the
    device check count this at real size). Padding is avoided because it is not exact: padding the rows of
    reports under 16 wordpieces to a longer report's length moved their embeddings by ~1e-6 (longer rows take
    other kernel paths; rows of 16 or more padded further came out equal, but that is no rule to rely on).
    Everything after BERT (spans, NER, pruning, relations, coreference) runs per report, as a one-sentence
    document with exactly the shapes of the package's own pass. Those heads are not shared: their matrix
    products round differently when more rows share a call (one ulp at real size), enough to change which spans
    the relation pruner keeps when mention scores nearly tie."""

    def __init__(self, files: RadGraphFiles, device: str | None = None):
        config = json.loads((files.model_dir / "config.json").read_text())
        vocab = load_vocabulary(files.model_dir / "vocabulary")
        self.dataset = dataset_name(vocab, files.model_dir)
        self.reader, model = build(config, vocab, files.bert_dir)
        state = torch.load(files.model_dir / "weights.th", map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        from llavarad_cli.model.loading import pick_device

        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        # past this many wordpieces allennlp folds a row into segments: such reports keep their own BERT pass
        self.max_wordpieces = config["model"]["embedder"]["token_embedders"]["bert"].get("max_length")

    def __call__(self, texts: Sequence[str]) -> list[dict]:
        batches = [self._batch(_tokens(text)) for text in texts]
        out: list = [None] * len(texts)
        for group in _groups([b["text"]["bert"]["token_ids"].shape[-1] for b in batches]):
            for i, given in zip(group, self._encode([batches[i] for i in group])):
                out[i] = self._annotate(batches[i], given)
        return out

    def annotate_one(self, text: str) -> dict:
        """One report through the package's own path, BERT included (the reference for the shared passes)."""
        return self._annotate(self._batch(_tokens(text)), None)

    def _batch(self, words: list[str]) -> dict:
        """The model input for one report: a document of one sentence, as the package builds it."""
        from radgraph.allennlp.data.dataloader import allennlp_collate
        from radgraph.utils import batch_to_device

        instance = self.reader.text_to_instance({"doc_key": "0", "sentences": [list(words)],
                                                 "dataset": self.dataset})
        instance.index_fields(self.model.vocab)
        return batch_to_device(allennlp_collate([instance]), self.device)

    def _encode(self, batches: Sequence[dict]) -> list:
        """The BERT word embeddings (1 x 1 x words x width, as its own pass gives them) of reports with one
        wordpiece count, from one shared pass; ``None`` for each report that runs BERT itself: one alone, or
        past BERT's window (where allennlp folds rows into segments)."""
        bert = [b["text"]["bert"] for b in batches]
        if len(batches) == 1 or (self.max_wordpieces and bert[0]["token_ids"].shape[-1] > self.max_wordpieces):
            return [None] * len(batches)
        # the reports as the sentences of one document; only the word-level fields are padded (zeros, masks off)
        text = {"bert": {key: _stack_padded([b[key] for b in bert]) for key in bert[0]}}
        with torch.no_grad():
            embeddings = self.model._embedder(text, num_wrapping_dims=1)  # 1 x reports x longest x width
        return [embeddings[:, k:k + 1, :b["mask"].shape[-1]].contiguous() for k, b in enumerate(bert)]

    def _annotate(self, batch: dict, given_embeddings) -> dict:
        """One report's pass through DyGIE, with BERT replaced by ``given_embeddings`` when there are some."""
        from radgraph.utils import get_entity

        embedder = self.model._embedder
        if given_embeddings is not None:
            self.model._embedder = _GivenEmbeddings(given_embeddings)
        try:
            with torch.no_grad():
                output = self.model(**batch)
        finally:
            self.model._embedder = embedder
        result = self.model.make_output_human_readable(output).to_json()
        sentence = result["sentences"][0]
        ner = (result.get("predicted_ner") or [[]])[0]
        relations = (result.get("predicted_relations") or [[]])[0]
        return {"text": " ".join(sentence), "entities": get_entity(ner, relations, sentence)}


def _groups(wordpieces: Sequence[int]) -> list[list[int]]:
    """Indices of the reports that share a BERT pass: equal wordpiece counts, at most BATCH_REPORTS a pass."""
    by_count: dict[int, list[int]] = {}
    for i, count in enumerate(wordpieces):
        by_count.setdefault(count, []).append(i)
    return [same[k:k + BATCH_REPORTS] for _, same in sorted(by_count.items())
            for k in range(0, len(same), BATCH_REPORTS)]


def _stack_padded(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """One-sentence fields (1 x 1 x length x ...) padded with zeros to the longest and stacked as sentences."""
    longest = max(r.shape[2] for r in rows)
    padded = []
    for r in rows:
        pad = [0, 0] * (r.dim() - 3) + [0, longest - r.shape[2]]
        padded.append(torch.nn.functional.pad(r, pad))
    return torch.cat(padded, dim=1)
