"""An offline stand-in for radgraph.tar.gz, for the tests and benchmarks/bench_evaluate.py: the same layout and config structure (allennlp
config.json naming PubMedBERT, weights.th, vocabulary/ with RadGraph's label namespaces), a tiny random BERT, and
the BERT's config + tokenizer files in a folder named as the real ones are. Nothing touches the hub."""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

#: The BERT named by the real archive's config.json (hub id; Microsoft has since renamed it BiomedBERT).
PUBMEDBERT = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext"
ENTITY_LABELS = ("ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA")
RELATION_LABELS = ("suggestive_of", "located_at", "modify")
DATASET = "radgraph"


def archive_config(bert: str = PUBMEDBERT, max_span_width: int = 6, hidden: int = 16) -> dict:
    """DyGIE++'s config layout, as in radgraph.tar.gz (training-only keys left out)."""
    bert_cfg = {"type": "pretrained_transformer_mismatched", "model_name": bert, "max_length": 512}
    return {
        "dataset_reader": {"type": "dygie", "max_span_width": max_span_width, "token_indexers": {"bert": bert_cfg}},
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": dict(bert_cfg)}},
            "initializer": {"regexes": [["_span_width_embedding.weight", {"type": "xavier_normal"}]]},
            "module_initializer": {"regexes": [[".*weight", {"type": "xavier_normal"}],
                                               [".*weight_matrix", {"type": "xavier_normal"}]]},
            "feature_size": 8,
            "max_span_width": max_span_width,
            "target_task": "relation",
            "feedforward_params": {"num_layers": 2, "hidden_dims": hidden, "dropout": 0.4},
            "loss_weights": {"ner": 0.2, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "modules": {"coref": {"spans_per_word": 0.3, "max_antecedents": 100, "coref_prop": 0},
                        "ner": {},
                        "relation": {"spans_per_word": 0.5},
                        "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                                   "loss_weights": {"trigger": 0.2, "arguments": 1.0}}},
        },
    }


def tiny_bert_files(folder: Path, texts: Iterable[str], vocab_size: int = 600, real_size: bool = False) -> Path:
    """config.json + vocab.txt + tokenizer_config.json, the three files the real BERT repo provides."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, show_progress=False)
    trainer.save_model(str(folder))
    size = len((folder / "vocab.txt").read_text("utf-8").splitlines())
    # real_size: PubMedBERT-base's shape (BertConfig's defaults: 768 wide, 12 layers), for the benchmark
    shape = {} if real_size else dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertConfig(vocab_size=size, max_position_embeddings=512, **shape).to_json_file(str(folder / "config.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def write_vocabulary(folder: Path) -> None:
    """allennlp's vocabulary files: the null entity label "" first (index 0), relations without a null label."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    (folder / f"{DATASET}__ner_labels.txt").write_text("\n" + "\n".join(ENTITY_LABELS) + "\n")
    (folder / f"{DATASET}__relation_labels.txt").write_text("\n".join(RELATION_LABELS) + "\n")


def tiny_radgraph(folder: Path, texts: Iterable[str], seed: int = 0, real_size: bool = False) -> Path:
    """``folder/radgraph.tar.gz`` with seeded random weights, plus ``folder/<PubMedBERT name>/``; returns folder.

    Weights are widened from their init so that the random model finds entities and relations that depend on
    the text (a test can then see a wrong tokenisation or a mixed-up report)."""
    import torch

    from llavarad_cli.evaluate.radgraph_model import build, load_vocabulary

    folder = Path(folder)
    texts = list(texts)
    bert_dir = tiny_bert_files(folder / PUBMEDBERT.split("/")[-1], texts, 30522 if real_size else 600, real_size)
    config = archive_config(hidden=150) if real_size else archive_config()  # 150: DyGIE++'s usual width
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        (model_dir / "config.json").write_text(json.dumps(config, indent=2))
        write_vocabulary(model_dir / "vocabulary")
        torch.manual_seed(seed)
        _, model = build(config, load_vocabulary(model_dir / "vocabulary"), bert_dir)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() == 2:
                    param.normal_(0.0, 0.5)
                elif "bias" in name:
                    param.normal_(0.0, 0.5)
        torch.save(model.state_dict(), model_dir / "weights.th")
        with tarfile.open(folder / "radgraph.tar.gz", "w:gz") as tar:
            for name in ("config.json", "weights.th", "vocabulary"):
                tar.add(model_dir / name, arcname=name)
    return folder
