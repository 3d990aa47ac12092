"""Token ids around <image> for the real LLaMA/Vicuna SentencePiece shape, as the reference's slow tokenizer made them.

The tokenizer is the LLaMA-style 32000-piece SentencePiece model shipped in the mistral-common wheel (Apache-2.0,
Mistral AI; read from the installed wheel, not copied; same algorithm and special ids as Vicuna's: <unk>=0,
<s>=1, </s>=2, byte fallback). Expected ids are both golden and cross-checked with SentencePiece driven
directly, chunk by chunk, as the reference did; every Open-I report and indication, the MIMIC example report
and generated whitespace-heavy strings must encode and decode exactly as SentencePiece does.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest
from reference_tokens import reference_ids

from llavarad_cli.prompts import (IMAGE_TOKEN_INDEX, clean_reason, render_plain, render_v1_inference,
                                  render_v1_training, tokenizer_image_token, user_turn)

pytest.importorskip("sentencepiece")
mistral_common = pytest.importorskip("mistral_common")
SP_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
DATA = Path(__file__).parent / "data"
SPECIALS = ("<s>", "</s>", "<unk>")


def _tokenizer_dir(root: Path, add_bos: bool | None) -> Path:
    shutil.copy(SP_MODEL, root / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if add_bos is not None:  # Vicuna v1.5's tokenizer_config.json says add_bos_token: true, legacy: false
        config.update(add_bos_token=add_bos, add_eos_token=False, legacy=False, clean_up_tokenization_spaces=False)
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
        assert tokenizer_image_token(text, llama_tok) == reference_ids(text, sp)


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


# -- exactly SentencePiece, on real and generated text ------------------------------------------------------------

def _openi_texts() -> list[str]:
    with open(DATA / "openi" / "indiana_reports.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [row[k] for row in rows for k in ("indication", "comparison", "findings", "impression") if row[k]]


def _mimic_texts() -> list[str]:
    report = (DATA / "mimic-format" / "mimic_cxr_website_example_report.txt").read_text(encoding="utf-8")
    sections = json.loads((DATA / "mimic-format" / "section_parser_expected.json").read_text())["sections"]
    texts = [report, *report.splitlines(), *(s["text"] for s in sections), *(s["text"].strip() for s in sections)]
    return texts + [clean_reason(t) for t in texts]  # reasons as the loaders pass them: newlines -> spaces


def _generated_texts(n: int = 400, seed: int = 12) -> list[str]:
    """Report-like strings built from runs of spaces, tabs, blank lines, "space + newline", leading/trailing
    whitespace, non-ASCII letters and characters only byte fallback can spell (not in the 32000 pieces)."""
    rnd = random.Random(seed)
    words = ["Heart", "size", "normal.", "No", "pneumothorax.", "XXXX", "___", "effusion,", "5cm", "r/o", "(PA)",
             "µg", "90°", "Ä", "é", "—", "≥", "½", "ﬁ", "▁", "鬱", "𝔸", "🧬", "ǅ", "\u2028", "\x01"]
    gaps = [" ", " ", " ", "  ", "   ", "    ", "\t", " \t ", "\n", "\n\n", " \n", "\n ", " \n \n", "\r\n", ""]
    texts = []
    for _ in range(n):
        parts = [rnd.choice(["", " ", "  ", "\n", "\t"])]
        for _ in range(rnd.randint(1, 12)):
            parts += [rnd.choice(words), rnd.choice(gaps)]
        texts.append("".join(parts) + rnd.choice(["", " ", "  ", "\n", " \n"]))
    return texts + [" ", "  ", "\n", "\t", "鬱", " leading", "trailing  "]


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    return {"openi": _openi_texts(), "mimic": _mimic_texts(), "generated": _generated_texts()}


def test_corpus_is_whitespace_heavy_and_has_no_literal_special_tokens(corpus, sp):
    texts = [t for group in corpus.values() for t in group]
    assert not [t for t in texts if any(s in t for s in SPECIALS)]  # those follow the 4.31 rules tested below
    assert sum("  " in t or " \n" in t or "\n\n" in t for t in corpus["openi"] + corpus["mimic"]) >= 20
    assert sum("  " in t for t in corpus["generated"]) >= 100
    byte_pieces = {p for t in corpus["generated"] for p in sp.encode(t, out_type=str) if p.startswith("<0x")}
    assert len(byte_pieces) >= 8  # byte fallback really exercised


@pytest.mark.parametrize("group", ["openi", "mimic", "generated"])
def test_ids_and_text_are_exactly_sentencepiece(llama_tok, sp, corpus, group):
    wrong_ids, wrong_text = [], []
    for text in corpus[group]:
        ids = llama_tok(text).input_ids
        if ids != [1] + sp.encode(text):
            wrong_ids.append(text)
        if llama_tok.decode(ids, skip_special_tokens=True) != sp.decode(sp.encode(text)):
            wrong_text.append(text)
    assert not wrong_ids, f"{len(wrong_ids)} of {len(corpus[group])} texts, e.g. {wrong_ids[:3]!r}"
    assert not wrong_text, f"{len(wrong_text)} of {len(corpus[group])} texts, e.g. {wrong_text[:3]!r}"


def test_openi_prompts_and_training_strings_match_the_reference_chunking(llama_tok, sp):
    with open(DATA / "openi" / "indiana_reports.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    wrong = []
    for row in rows:
        for text in (render_v1_inference(user_turn(row["indication"] or None)),
                     render_v1_training(user_turn(row["indication"] or None), row["findings"]),
                     render_plain(row["findings"])):
            if tokenizer_image_token(text, llama_tok) != reference_ids(text, sp):
                wrong.append(text)
    assert not wrong, f"{len(wrong)} strings differ, e.g. {wrong[:2]!r}"


def test_literal_special_tokens_follow_the_slow_llama_tokenizer(llama_tok):
    """Matched as their ids, the text around them untouched; after one, no dummy-prefix space (legacy=False),
    but a real space stays its own piece."""
    assert llama_tok("x</s>y").input_ids == [1, 1318, 2, 28724]
    assert llama_tok("x</s> y").input_ids == [1, 1318, 2, 28705, 337]
    assert llama_tok("<s>a").input_ids == [1, 1, 28708]
    assert llama_tok("No effusion.</s>").input_ids[-1] == 2
    # 4.31's convert_tokens_to_string: a space before a special token that follows text, none after one.
    assert llama_tok.decode([1, 1318, 2, 28724]) == "<s> x</s>y"
    assert llama_tok.decode([1, 1318, 2, 28724, 0], skip_special_tokens=True) == "xy"


def test_sentencepiece_folders_use_the_wrapper_and_others_do_not(tmp_path, tiny_tokenizer):
    from llavarad_cli.model.loading import load_tokenizer
    from llavarad_cli.model.sp_tokenizer import SentencePieceTokenizer

    (tmp_path / "sp").mkdir()
    folder = _tokenizer_dir(tmp_path / "sp", add_bos=True)
    # A tokenizer.json next to tokenizer.model changes nothing: the reference asked for the slow tokenizer.
    (folder / "tokenizer.json").write_text("{}")
    assert isinstance(load_tokenizer(str(folder)), SentencePieceTokenizer)
    tiny_tokenizer.save_pretrained(tmp_path / "bpe")
    assert not isinstance(load_tokenizer(str(tmp_path / "bpe")), SentencePieceTokenizer)


def test_saved_tokenizer_loads_back_the_same(llama_tok, tmp_path, corpus):
    from llavarad_cli.model.loading import load_tokenizer
    from llavarad_cli.model.sp_tokenizer import SentencePieceTokenizer

    llama_tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert isinstance(again, SentencePieceTokenizer) and again.pad_token == "<unk>"
    assert (tmp_path / "tokenizer.model").read_bytes() == SP_MODEL.read_bytes()
    for text in corpus["generated"][:50] + ["x</s>y", "x</s> y"]:
        assert again(text).input_ids == llama_tok(text).input_ids


def test_hub_id_with_a_sentencepiece_model_uses_the_wrapper(tmp_path, monkeypatch):
    """A hub base (lmsys/vicuna-7b-v1.5) is looked at through its cached snapshot folder."""
    import llavarad_cli.model.loading as loading
    from llavarad_cli.model.sp_tokenizer import SentencePieceTokenizer

    snapshot = _tokenizer_dir(tmp_path, add_bos=True)
    asked = []

    def fake_resolve_file(source, filename, what, required=True):
        asked.append((source, filename))
        path = snapshot / filename
        return path if path.is_file() else None

    monkeypatch.setattr(loading, "resolve_file", fake_resolve_file)
    tok = loading.load_tokenizer("lmsys/vicuna-7b-v1.5")
    assert isinstance(tok, SentencePieceTokenizer) and tok("x").input_ids == [1, 1318]
    assert ("lmsys/vicuna-7b-v1.5", "tokenizer.model") in asked


# -- whitespace reasons give the reference's findings ----------------------------------------------------------

#: Indications shaped like MIMIC's: blank lines and "space + newline" (newlines become spaces), runs of spaces,
#: tabs, leading and trailing whitespace.
WHITESPACE_REASONS = [
    "___ year old woman with ?pleural effusion  // ?pleural effusion\n ",
    "Chest pain.  Shortness of breath.",
    "cough\n\nfever",
    "r/o PNA \n eval for effusion",
    "   leading spaces",
    "trailing spaces   ",
    "tab\tseparated\t\tfields",
    "Line one.\n \nLine two.   µ 90°",
]


@pytest.fixture(scope="module")
def vocab_model():
    """The tiny LLaVA-Rad (tower, projector) on a tiny LM with the real 32000-row vocabulary, so every id the
    SentencePiece model can produce is a real embedding row and every generated id decodes."""
    import torch
    from transformers import LlamaForCausalLM

    from llavarad_cli import testing
    from llavarad_cli.model.llavarad import LlavaRadModel

    tiny, _, _ = testing.tiny_llavarad_model()
    torch.manual_seed(5)
    config = testing.tiny_llama_config(vocab_size=32000)
    config.initializer_range = 0.2  # a sharper random LM: its greedy text depends on every prompt id
    lm = LlamaForCausalLM(config).eval()
    return LlavaRadModel(lm, tiny.vision_tower, tiny.projector, tiny.config).eval()


def _reference_findings(model, sp, query: str, pixels, max_new_tokens: int) -> str:
    """The reference's way: prompt ids from SentencePiece chunk by chunk, greedy, then special ids dropped,
    SentencePiece's decode, strip, a trailing "</s>" removed, strip."""
    import torch

    ids = torch.tensor([reference_ids(render_v1_inference(query), sp)])
    out = model.generate(ids, torch.ones_like(ids), pixels, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=2, pad_token_id=0)
    text = sp.decode([i for i in out[0].tolist() if i not in (0, 1, 2)]).strip()
    return text[: -len("</s>")].strip() if text.endswith("</s>") else text


def test_whitespace_reasons_give_the_reference_findings(vocab_model, llama_tok, sp):
    import torch

    from llavarad_cli.infer.generate import GenerationSettings, Predictor

    predictor = Predictor(vocab_model, llama_tok, GenerationSettings(max_new_tokens=12))
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    got, expected = [], []
    for reason in WHITESPACE_REASONS:
        query = user_turn(reason)
        got.append(predictor.predict([query], pixels)[0])
        expected.append(_reference_findings(vocab_model, sp, query, pixels, 12))
    assert got == expected
    assert len(set(expected)) == len(expected) and all(expected)  # the random LM really follows its prompt
