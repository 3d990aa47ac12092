"""The attention the scorers' BERT encoders run with, to give the labels the paper's code gave.

The paper scored with transformers 4.31, whose BERT had one attention: the explicit softmax(QK^T / sqrt(d))V
("eager"). transformers 5 defaults to PyTorch's fused SDPA, which orders the float operations differently; on
CheXbert and RadGraph that moves logits enough to flip near-ties (11 of 7,168 CheXbert cells on 2,461 Open-I
reports with real-size weights, and the flips move with batch composition), while eager attention gave the
paper's code's labels and annotations exactly. It costs some speed (about 25% on CPU), which length-sorted
batching more than pays back.
"""

from __future__ import annotations

PAPER_ATTENTION = "eager"


def use_paper_attention(module) -> None:
    """Switch every transformers model inside ``module`` (a BERT in a larger scorer) to the paper's attention."""
    from transformers import PreTrainedModel

    for sub in module.modules():
        if isinstance(sub, PreTrainedModel):
            sub.set_attn_implementation(PAPER_ATTENTION)
