"""A ``tokenizer.json`` (Hugging Face ``tokenizers``) that encodes like a SentencePiece BPE model, for exports of
SentencePiece bases (Vicuna), which llavarad itself drives with ``sentencepiece`` (model/sp_tokenizer.py).

transformers 5's own conversion ranks merges so that whitespace runs merge early (``▁▁`` first), where
SentencePiece gives whitespace-only pieces their very low scores and so merges them last. Here the BPE is rebuilt
from the model itself: every piece's splits into two vocabulary pieces, ranked by the piece's score (highest
first), as SentencePiece picks its merges; words start at the first ``▁`` of each whitespace run (SentencePiece's
whitespace split with whitespace-only pieces allowed); unknown characters fall back to bytes. Each text piece
between special tokens gets the dummy-prefix ``▁``, i.e. every ``<image>`` chunk is encoded as if alone, as
llavarad tokenises prompts. ``export_processor.check_tokenisation`` proves the result on probe prompts at every
export, and the tests compare it with ``sentencepiece`` on real and generated report text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPACE = "▁"


def _model_proto(model_file: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def sentencepiece_tokenizer_json(model_file: Path, bos_token: str | None, added: dict[str, int]) -> dict[str, Any]:
    """The ``tokenizer.json`` object for ``model_file``; ``added``: special tokens (content -> id) besides the
    model's own control and unknown pieces."""
    from llavarad_cli.errors import UserError

    proto = _model_proto(model_file)
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    problems = [what for what, bad in (
        ("not a BPE model", trainer.model_type != 2), ("no byte fallback", not trainer.byte_fallback),
        ("whitespace as suffix", trainer.treat_whitespace_as_suffix),
        ("no whitespace split", not trainer.split_by_whitespace),
        ("extra-whitespace removal", normalizer.remove_extra_whitespaces),
        (f"`{normalizer.name}` normalisation", normalizer.name not in ("identity", "")),
        ("no dummy prefix", not normalizer.add_dummy_prefix)) if bad]
    if problems:
        raise UserError(f"cannot export this SentencePiece tokenizer ({', '.join(problems)}): only LLaMA-style "
                        "BPE models are converted")
    # ModelProto piece types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
    vocab: dict[str, int] = {}
    scores: dict[str, float] = {}
    specials: list[tuple[int, str]] = []
    for index, piece in enumerate(proto.pieces):
        vocab[piece.piece] = index
        if piece.type in (1, 4):
            scores[piece.piece] = piece.score
        elif piece.type in (2, 3):
            specials.append((index, piece.piece))
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                 if piece[:i] in scores and piece[i:] in scores]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((score, vocab[piece], pair) for pair in local)
    merges.sort(key=lambda item: (-item[0], item[1]))
    unk = next((p.piece for p in proto.pieces if p.type == 2), None)
    added_tokens = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True}
                    for i, c in sorted(specials + [(i, c) for c, i in added.items()])]
    for content, index in added.items():
        vocab[content] = index  # an id of its own beyond the pieces (tokenizers would renumber it otherwise)
    post = None
    if bos_token is not None:
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_token: {"id": bos_token, "ids": [vocab[bos_token]], "tokens": [bos_token]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
        # Per piece between special tokens: the dummy prefix, then spaces as ▁ (SentencePiece's own normaliser).
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": SPACE}]},
        # A word starts at the first ▁ of every whitespace run.
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": f"(?<!{SPACE}){SPACE}"},
                          "behavior": "MergedWithNext", "invert": False},
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [list(pair) for _, _, pair in merges]},
    }
