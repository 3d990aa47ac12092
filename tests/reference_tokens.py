"""The reference's token ids, driven by SentencePiece directly, for the tokenisation and training-mask tests.

The reference used the slow LLaMA tokenizer and split prompts at ``<image>``: each chunk was encoded alone (with
its own dummy prefix space), one BOS went in front, -200 between chunks, and a literal ``</s>`` in the text
became the EOS id."""

from __future__ import annotations

from llavarad_cli.prompts import IMAGE_TOKEN_INDEX


def reference_ids(text: str, sp) -> list[int]:
    """``text``'s ids as the reference made them; ``sp`` is a ``sentencepiece.SentencePieceProcessor``."""
    ids = [1]
    for i, chunk in enumerate(text.split("<image>")):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        for j, part in enumerate(chunk.split("</s>")):
            if j:
                ids.append(2)
            if part:
                ids += sp.encode(part)
    return ids
