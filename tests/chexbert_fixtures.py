"""Offline stand-ins for the CheXbert files, for the tests and benchmarks/bench_evaluate.py: a WordPiece tokenizer trained here and a
randomly initialised labeler saved in chexbert.pth's layout. Nothing touches the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from llavarad_cli.evaluate.chexbert import build_labeler


def wordpiece_tokenizer(texts: Iterable[str], folder: Path, vocab_size: int = 2000):
    """A lower-casing BERT WordPiece tokenizer trained on ``texts``, saved to ``folder`` (vocab.txt + config)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, show_progress=False)
    trainer.save_model(str(folder))
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(folder))
    return tok


def tiny_bert_config(vocab_size: int = 2000):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512)


def random_chexbert(path: Path, config=None, seed: int = 0):
    """Save a seeded random labeler as chexbert.pth does it: {"model_state_dict": {"module." + key: tensor}}.
    A non-default ``config`` is saved as config.json beside it, where the loader looks for it."""
    import torch

    torch.manual_seed(seed)
    model = build_labeler(config)
    # BERT's 0.02-std init makes every report look alike to the heads; wider weights give labels that depend on
    # the text, so that tests can see a batching or padding mistake
    with torch.no_grad():
        for param in model.bert.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
        for head in model.linear_heads:
            head.weight.normal_(0.0, 3.0)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "model_state_dict": state}, path)
    if config is not None:
        config.to_json_file(str(path.parent / "config.json"))
    return model
