"""Token ids around <image> for the real LLaMA/Vicuna SentencePiece shape, as the reference's slow tokenizer made them.

The tokenizer is the LLaMA-style 32000-piece SentencePiece model shipped in the mistral-common wheel (same
algorithm and special ids as Vicuna's: <unk>=0, <s>=1, </s>=2, byte fallback). Expected ids are both golden
and cross-checked with SentencePiece driven directly, chunk by chunk, as the reference did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llavarad_cli.prompts import (IMAGE_TOKEN_INDEX, render_plain, render_v1_inference, render_v1_training,
                                  tokenizer_image_token, user_turn)

pytest.importorskip("sentencepiece")
mistral_common = pytest.importorskip("mistral_common")
SP_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def _tokenizer_dir(root: Path, add_bos: bool | None) -> Path:
    shutil.copy(SP_MODEL, root / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if add_bos is not None:  # Vicuna v1.5's tokenizer_config.json says add_bos_token: true, legacy: false
        config.update(add_bos_token=add_bos, add_eos_token=False, legacy=False)
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def llama_tok(tmp_path_factory):
    if not SP_MODEL.is_file():
        pytest.skip("mistral-common has no tokenizer.model.v1")
    from llavarad_cli.model.loading import load_tokenizer

    return load_tokenizer(str(_tokenizer_dir(tmp_path_factory.mktemp("tok"), add_bos=True)))


@pytest.fixture(scope="module")
def sp():
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))


def _reference_ids(text: str, sp) -> list[int]:
    """What the reference got: each <image> chunk encoded alone (dummy prefix each time), one BOS in front,
    -200 between chunks, and a literal </s> matched as the EOS id."""
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


def test_inference_prompt_golden_ids_around_the_image(llama_tok):
    ids = tokenizer_image_token(render_v1_inference(user_turn("cough")), llama_tok)
    assert ids[:3] == [1, 330, 10706]  # <s> ▁A ▁chat
    assert ids.count(1) == 1 and ids.count(IMAGE_TOKEN_INDEX) == 1
    k = ids.index(IMAGE_TOKEN_INDEX)
    # "USER: " ends its chunk with a lone ▁; the next chunk starts with its own dummy ▁ then the byte <0x0A>.
    assert ids[k - 3:k + 6] == [725, 28747, 28705, IMAGE_TOKEN_INDEX, 28705, 13, 18325, 547, 264]
    assert llama_tok.convert_ids_to_tokens(ids[k + 1:k + 5]) == ["▁", "<0x0A>", "Prov", "ide"]
    # "... ASSISTANT:" with no trailing space at inference.
    assert ids[-4:] == [8602, 8048, 12738, 28747]


def test_training_string_ends_with_findings_and_eos(llama_tok):
    ids = tokenizer_image_token(render_v1_training(user_turn(None), "The lungs are clear."), llama_tok)
    assert ids[-11:] == [28723, 8602, 8048, 12738, 28747, 415, 25195, 460, 3081, 28723, 2]  # image. ASSISTANT: …
    assert llama_tok.convert_ids_to_tokens(ids[-6:]) == ["▁The", "▁lungs", "▁are", "▁clear", ".", "</s>"]


def test_trailing_space_after_assistant_is_its_own_piece(llama_tok):
    # What the v1 label mask relies on (instruction length = len(part0 + " ASSISTANT: ") - 2).
    assert tokenizer_image_token("x ASSISTANT: ", llama_tok) == [1, 1318, 8602, 8048, 12738, 28747, 28705]


def test_plain_template_ids(llama_tok):
    assert tokenizer_image_token(render_plain("The lungs are clear."), llama_tok) == [
        1, IMAGE_TOKEN_INDEX, 415, 25195, 460, 3081, 28723, 13]


@pytest.mark.parametrize("reason", [None, "cough", "Chest pain, cough,\nfever; r/o PNA ___ 5cm", "ÄÖ µ 90°"])
def test_ids_match_sentencepiece_chunk_by_chunk(llama_tok, sp, reason):
    for text in (render_v1_inference(user_turn(reason)), render_v1_training(user_turn(reason), "No effusion.")):
        assert tokenizer_image_token(text, llama_tok) == _reference_ids(text, sp)


def test_tokenizer_without_add_bos_gets_bos_back(tmp_path):
    from llavarad_cli.model.loading import load_tokenizer

    tok = load_tokenizer(str(_tokenizer_dir(tmp_path, add_bos=None)))
    assert tok("x").input_ids[0] == 1
    assert tok.pad_token == "<unk>"  # pad = unk, as the reference


def test_predictions_decoded_like_the_reference(llama_tok, sp):
    """New ids only, special tokens skipped (EOS, pad = unk), stripped, a literal trailing "</s>" removed."""
    import torch

    from llavarad_cli.infer.generate import Predictor

    rows = [sp.encode("The lungs are clear.") + [2, 0, 0],
            sp.encode(" No effusion. ") + sp.encode("</s>"),  # "</s>" spelt out in plain pieces, not EOS
            [2, 0, 0, 0]]
    width = max(map(len, rows))
    generated = torch.tensor([r + [0] * (width - len(r)) for r in rows])

    class Generated:
        config = type("C", (), {"template": "v1"})()
        device, dtype = torch.device("cpu"), torch.float32

        def generate(self, ids, mask, pixels, **kwargs):
            assert kwargs["do_sample"] is False and kwargs["eos_token_id"] == 2 and kwargs["pad_token_id"] == 0
            assert (ids == IMAGE_TOKEN_INDEX).sum() == len(rows) and ids[0, 0] == 0 and mask[0, 0] == 0
            return generated

    queries = [user_turn(None), user_turn("a much longer reason for this examination"), user_turn("x")]
    got = Predictor(Generated(), llama_tok).predict(queries, torch.zeros(3, 3, 4, 4))
    assert got == ["The lungs are clear.", "No effusion.", ""]
