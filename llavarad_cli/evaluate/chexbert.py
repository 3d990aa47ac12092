"""The CheXbert labeler (bert-base-uncased + 14 heads), loading ``chexbert.pth``, and length-sorted batch labelling.

Architecture and tokenisation follow the labeler the paper used (rrg_eval/chexbert.py): the last hidden state of
[CLS] feeds 13 four-way heads (blank/positive/negative/uncertain) and one two-way "No Finding" head. Reports are
whitespace-normalised, WordPiece-tokenised, wrapped in [CLS]/[SEP] and cut to 512 ids ([SEP] kept last).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from llavarad_cli.errors import UserError
from llavarad_cli.evaluate.attention import use_paper_attention
from llavarad_cli.evaluate.labels import CONDITIONS

MAX_LEN = 512


def build_labeler(config=None):
    """CheXbert's module tree, so that chexbert.pth keys (minus ``module.``) load strictly."""
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    class CheXbertLabeler(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.bert = BertModel(cfg)  # keeps the pooler: the checkpoint has its weights
            self.dropout = nn.Dropout(0.1)
            hidden = cfg.hidden_size
            self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(13)] + [nn.Linear(hidden, 2)])

        def forward(self, input_ids, attention_mask):
            cls = self.bert(input_ids, attention_mask=attention_mask)[0][:, 0, :]
            cls = self.dropout(cls)
            return [head(cls) for head in self.linear_heads]

        @torch.no_grad()
        def classes(self, input_ids, attention_mask):
            """(batch, 14) class ids: argmax of each head."""
            return torch.stack([o.argmax(dim=1) for o in self(input_ids, attention_mask)], dim=1)

    # BertConfig's defaults are bert-base-uncased's shape (30522 vocab, 768 wide, 12 layers, 512 positions)
    model = CheXbertLabeler(config or BertConfig())
    use_paper_attention(model)
    return model


def labeler_config(weights: Path):
    """bert-base-uncased's shape, unless a BERT ``config.json`` lies beside the weights (other sizes, tests)."""
    from transformers import BertConfig

    beside = Path(weights).parent / "config.json"
    return BertConfig.from_json_file(str(beside)) if beside.is_file() else BertConfig()


def load_state(model, weights: Path) -> None:
    """Load chexbert.pth (``model_state_dict``, ``module.`` prefixes) strictly, with weights_only unpickling."""
    import torch

    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which one
        raise UserError(f"{weights}: cannot be read as a CheXbert checkpoint ({type(exc).__name__}: {exc})",
                        hint="pass chexbert.pth from StanfordAIMI/RRG_scorers with --chexbert-weights") from None
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{weights}: no model_state_dict in this file", hint="expected chexbert.pth")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    # older transformers saved position_ids as a buffer; current BertModel recreates it, so it carries no weight
    state.pop("bert.embeddings.position_ids", None)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: another model size
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise UserError(f"{weights}: does not match the CheXbert labeler ({first[:200]})",
                        hint="expected chexbert.pth (bert-base); a different size needs its config.json beside it") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{weights}: does not match the CheXbert labeler "
                        f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})",
                        hint="expected chexbert.pth from StanfordAIMI/RRG_scorers")


def encode(tokenizer, text: str) -> list[int]:
    """Token ids as the original labeler built them (slow-tokenizer ``encode_plus`` on a token list)."""
    text = re.sub(r"\s+", " ", text.strip().replace("\n", " "))
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) if text else []
    ids = [tokenizer.cls_token_id] + ids + [tokenizer.sep_token_id]
    if len(ids) > MAX_LEN:
        ids = ids[: MAX_LEN - 1] + [tokenizer.sep_token_id]
    return ids


def padded_tokens_per_batch(device) -> int:
    """Padded tokens per batch: on a CPU, compute-bound, small batches waste the least on padding; a GPU wants
    large ones."""
    return 1024 if str(device).startswith("cpu") else 32768


def _batches(order: Sequence[int], lengths: Sequence[int], batch_size: int, padded_tokens: int) -> list[list[int]]:
    """``order`` cut into batches of at most ``batch_size`` reports and at most ``padded_tokens`` tokens once
    padded to the batch's longest (a batch always takes at least one report)."""
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * max(lengths[i], max(lengths[j] for j in batches[-1])) <= padded_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def label_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 128, device=None,
                sort_by_length: bool = True, progress=None, padded_tokens: int | None = None) -> np.ndarray:
    """(len(texts), 14) CheXbert class ids. Sorting by length first cuts padding, and so time, several-fold;
    the results come back in the input order either way."""
    import torch

    from llavarad_cli.model.loading import pick_device

    device = pick_device(device)
    model.to(device).eval()
    encoded = [encode(tokenizer, t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i])) if sort_by_length else list(range(len(texts)))
    pad = tokenizer.pad_token_id or 0
    out = np.zeros((len(texts), len(CONDITIONS)), dtype=np.int64)
    for chunk in _batches(order, [len(e) for e in encoded], batch_size, padded_tokens or padded_tokens_per_batch(device)):
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.float)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1.0
        with torch.inference_mode():
            classes = model.classes(ids.to(device), mask.to(device)).cpu().numpy()
        out[chunk] = classes
        if progress is not None:
            progress(len(chunk))
    return out
