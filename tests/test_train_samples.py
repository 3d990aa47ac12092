"""Training samples: label masks for `plain` and `v1` on the real LLaMA SentencePiece shape, truncation, the
collator, the dataset's counted skips and the resumable data order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from reference_tokens import reference_ids

from llavarad_cli.prompts import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, V1_ROLES, V1_SEP, V1_SEP2, conversations,
                                  render_v1_training, tokenizer_image_token)
from llavarad_cli.train.samples import Sample, SampleProblem, build_sample, build_v1, text_budget, truncate

DATA = Path(__file__).parent / "data"
FINDINGS = ("The cardiac contours are normal. XXXX basilar atelectasis. The lungs are clear. "
            "Thoracic spondylosis. Lower cervical XXXX arthritis.")


@pytest.fixture(scope="module")
def llama_tok(tmp_path_factory):
    """Vicuna's tokenizer shape: the 32000-piece LLaMA SentencePiece model from the mistral-common wheel."""
    mistral_common = pytest.importorskip("mistral_common")
    pytest.importorskip("sentencepiece")
    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not model.is_file():
        pytest.skip("mistral-common has no tokenizer.model.v1")
    root = tmp_path_factory.mktemp("llama_tok")
    shutil.copy(model, root / "tokenizer.model")
    (root / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    from llavarad_cli.model.loading import load_tokenizer

    return load_tokenizer(str(root))


def reference_v1_labels(query: str, answer: str, tokenizer) -> tuple[list[int], list[int], bool]:
    """The reference's own ``preprocess_v1`` masking, rewritten here to prove ``build_v1`` agrees with it.

    Returns (ids, labels, mismatch); on a mismatch the reference would have masked the whole sample.
    """
    text = render_v1_training(query, answer)
    ids = tokenizer_image_token(text, tokenizer)
    labels = list(ids)
    sep = V1_SEP + V1_ROLES[1] + ": "
    cur = 1
    labels[0] = IGNORE_INDEX
    for rnd in text.split(V1_SEP2):
        if rnd == "":
            break
        parts = rnd.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenizer_image_token(rnd, tokenizer))
        instr_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
        labels[cur: cur + instr_len] = [IGNORE_INDEX] * len(labels[cur: cur + instr_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    return ids, labels, cur != len(ids)


def _record(reason, findings=FINDINGS, image="CXR7_IM-2263-1001.png", rid="7"):
    return {"id": rid, "image": image, "reason": reason, "conversations": conversations(reason, findings)}


def _supervised(ids, labels):
    return [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]


def test_plain_masks_bos_and_image_and_supervises_findings_and_newline(llama_tok):
    sample = build_sample(_record("Preop lumbar surgery"), "plain", llama_tok, 2048)
    assert isinstance(sample, Sample)
    assert sample.input_ids[:2] == [llama_tok.bos_token_id, IMAGE_TOKEN_INDEX]
    assert sample.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert sample.labels[2:] == sample.input_ids[2:]
    # The prompt and the reason are dropped; findings + "\n" (the <0x0A> piece, 13), no EOS.
    assert llama_tok.decode(sample.input_ids[2:]) == FINDINGS + "\n"
    assert sample.input_ids[-1] == 13 and llama_tok.eos_token_id not in sample.input_ids


@pytest.mark.parametrize("reason", ["Preop lumbar surgery", None, "chest pain\nfever"])
def test_v1_supervises_only_the_answer_and_eos_and_matches_the_reference_masking(llama_tok, reason):
    record = _record(reason)
    sample = build_sample(record, "v1", llama_tok, 2048)
    assert isinstance(sample, Sample)
    ids_ref, labels_ref, mismatch = reference_v1_labels(record["conversations"][0]["value"], FINDINGS, llama_tok)
    assert not mismatch
    assert sample.input_ids == ids_ref and sample.labels == labels_ref
    supervised = _supervised(sample.input_ids, sample.labels)
    assert supervised[-1] == llama_tok.eos_token_id
    assert llama_tok.decode(supervised[:-1]) == FINDINGS
    masked = [i for i, lab in zip(sample.input_ids, sample.labels) if lab == IGNORE_INDEX and i >= 0]
    text = llama_tok.decode(masked, skip_special_tokens=True)
    assert text.startswith("A chat between a curious user") and text.endswith("ASSISTANT:")
    assert sample.input_ids.count(IMAGE_TOKEN_INDEX) == 1


class _WordTokenizer:
    """A deterministic toy tokenizer: BOS, then one id per whitespace-separated word (ids handed out in order of
    first sight, per instance), ``</s>`` as the EOS id. With ``merge_assistant`` it joins ``ASSISTANT:`` and the
    word after it into one piece, as a BPE merge can join the prompt's last token with the answer's first."""

    bos_token_id, eos_token_id = 1, 2

    def __init__(self, merge_assistant: bool, eos_piece: str = "</s>"):
        self.merge_assistant, self.eos_piece, self.vocab = merge_assistant, eos_piece, {}

    def __call__(self, text):
        from types import SimpleNamespace

        text = text.replace("</s>", " </s>")
        if self.merge_assistant:
            text = text.replace("ASSISTANT: ", "ASSISTANT:")
        ids = [self.bos_token_id] + [self.eos_token_id if w == self.eos_piece else self.vocab.setdefault(w, len(self.vocab) + 3)
                                     for w in text.split()]
        return SimpleNamespace(input_ids=ids)


def test_v1_mask_mismatch_is_reported_not_zeroed():
    # Without the merge the toy gives a clean sample: the answer's two words and EOS supervised.
    clean = build_v1("<image>\nq", "no effusion", _WordTokenizer(merge_assistant=False))
    assert isinstance(clean, Sample) and len(_supervised(clean.input_ids, clean.labels)) == 3
    # With it, the sample no longer starts with the prompt's ids: reported (a two-word answer, so that a sample
    # would still come out if the prefix were not compared, with EOS in place so the EOS check cannot catch it).
    merged = build_v1("<image>\nq", "no effusion", _WordTokenizer(merge_assistant=True))
    assert isinstance(merged, SampleProblem) and merged.reason == "mask_mismatch"
    assert "merge" in merged.detail
    # A tokenizer that does not read `</s>` as its EOS token is the other mismatch.
    no_eos = build_v1("<image>\nq", "no effusion", _WordTokenizer(merge_assistant=False, eos_piece="<eos>"))
    assert isinstance(no_eos, SampleProblem) and no_eos.reason == "mask_mismatch" and "EOS" in no_eos.detail


def test_bad_records_become_counted_problems(tiny_tokenizer):
    empty = build_sample(_record(None, findings="  "), "v1", tiny_tokenizer, 512)
    assert isinstance(empty, SampleProblem) and empty.reason == "no_answer"
    broken = build_sample({"id": "x", "image": "a.png"}, "plain", tiny_tokenizer, 512)
    assert isinstance(broken, SampleProblem) and broken.reason == "bad_record"


def test_truncation_keeps_the_image_and_counts_image_rows(tiny_tokenizer):
    sample = build_sample(_record("cough", findings=FINDINGS * 20), "v1", tiny_tokenizer, 2048)
    cut = truncate(sample, 120)
    assert isinstance(cut, Sample) and cut.truncated and len(cut.input_ids) == 120
    assert IMAGE_TOKEN_INDEX in cut.input_ids
    assert isinstance(truncate(sample, 5), SampleProblem)  # the image token itself would be cut
    # 2048 text tokens + 1369 image rows fit Vicuna's 4096 positions; a 512-position LM caps the text.
    assert text_budget(2048, 4096, 1369) == 2048
    assert text_budget(2048, 512, 16) == 497
    with pytest.raises(ValueError):
        text_budget(2048, 1000, 1369)


def _dataset(tmp_path, tokenizer, records, template="v1"):
    from llavarad_cli.testing import TINY_IMAGE_SIZE
    from llavarad_cli.model.vision import eval_transform
    from llavarad_cli.train.dataset import TrainingRecords

    return TrainingRecords(records, DATA / "cxr-images" / "iu", tokenizer, template, 512, eval_transform(TINY_IMAGE_SIZE))


def test_dataset_reads_real_images_and_counts_unusable_ones(tmp_path, tiny_tokenizer):
    import torch

    from llavarad_cli.train.dataset import Collator

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = [_record("cough"), _record(None, rid="8"),
               _record(None, image="missing.png", rid="9"), _record(None, image="../../../etc/passwd", rid="10")]
    ds = _dataset(tmp_path, tiny_tokenizer, records)
    items = [ds[i] for i in range(len(ds))]
    ds.image_folder = tmp_path
    assert ds[0]["skip"] == "missing_image"
    ds.records = [_record(None, image="broken.png")]
    assert ds[0]["skip"] == "unreadable_image" and "broken.png" in ds[0]["detail"]
    batch = Collator(pad_id=0)(items)
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape == (2, 3, 56, 56)
    assert {s["reason"] for s in batch["skipped"]} == {"missing_image", "image_outside_folder"}
    # Right padding; the mask marks real positions (pad id 0 is also <unk>, so `ids != 0` would be wrong).
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths == [len(items[0]["input_ids"]), len(items[1]["input_ids"])]
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][short, min(lengths):], torch.zeros(max(lengths) - min(lengths), dtype=torch.long))
    assert Collator(pad_id=0)([items[2]]).keys() >= {"skipped"} and "input_ids" not in Collator(pad_id=0)([items[2]])


def test_epoch_plan_is_a_function_of_the_step_alone():
    from llavarad_cli.train.dataset import EpochPlan

    plans = [EpochPlan(10, seed=3, world_size=2, rank=r, micro_batch=2, grad_accum=2) for r in range(2)]
    assert plans[0].steps_per_epoch == 1 and plans[0].total_steps(3, None) == 3
    full = [p.indices(0, 3) for p in plans]
    # Each step reads 8 distinct records over both ranks; 2 left over per epoch are dropped.
    for step in range(3):
        both = full[0][step * 4:(step + 1) * 4] + full[1][step * 4:(step + 1) * 4]
        assert len(set(both)) == 8
    # Resuming at step 2 reads exactly what the uninterrupted run read from step 2 on.
    assert plans[1].indices(2, 3) == full[1][8:]
    assert EpochPlan(10, 4, 2, 0, 2, 2).indices(0, 1) != plans[0].indices(0, 1)  # the seed matters
    from llavarad_cli.errors import UserError

    with pytest.raises(UserError, match="larger than"):
        EpochPlan(3, 0, 2, 0, 2, 1)


def test_packed_records_round_trip_and_reject_bad_files(tmp_path):
    import json

    from llavarad_cli.errors import UserError
    from llavarad_cli.train.dataset import PackedRecords, load_records

    records = [{"id": f"r{i}", "image": f"p/{i}.jpg", "findings": "Clear é ✓" * i,
                "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
               for i in range(5)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    packed = load_records(path)
    assert isinstance(packed, PackedRecords) and len(packed) == 5
    kept = [{k: r[k] for k in ("id", "image", "conversations")} for r in records]
    assert [packed[i] for i in range(5)] == kept and packed[-1] == kept[-1]
    with pytest.raises(IndexError):
        packed[5]
    path.write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(UserError, match="record 0 has no `image` field"):
        load_records(path)
    path.write_text("[]")
    with pytest.raises(UserError, match="no records in the file"):
        load_records(path)


# -- masks equal the reference's preprocess_plain / preprocess_v1 on whitespace-heavy text ---------------------
# An independent re-statement of the reference's behaviour, driven by SentencePiece directly: the slow LLaMA
# tokenizer put BOS first and matched a literal "</s>" as EOS; each <image> chunk was tokenised on its own.

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
WHITESPACE_FINDINGS = [
    "Cardiac size cannot be evaluated.  Large left pleural effusion is new.  Small\n right effusion is new.",
    "Heart size normal. \n\nLungs are clear.   No effusion.",
    "  Leading spaces.\tA tab.  ",
    "No pneumothorax.\n \n XXXX opacity ___ 5cm.",
]
WHITESPACE_INDICATIONS = [None, "___ year old woman with ?pleural effusion  // ?pleural effusion\n ",
                          "cough \n fever", "  r/o PNA\t\teval"]


def _loader_human_turn(reason):
    if reason is None:
        return "<image>\nProvide a description of the findings in the radiology image."
    reason = reason.replace("\n", " ")
    return ("<image>\nProvide a description of the findings in the radiology image given the following "
            f"indication: {reason}")


def _reference_plain(findings, sp):
    ids = reference_ids("<image>" + findings + "\n", sp)
    n = len(reference_ids("<image>", sp))
    return ids, [IGNORE_INDEX] * n + ids[n:]


def _reference_v1(human, findings, sp, max_length=2048):
    human = ("<image>\n" + human.replace("<image>", "").strip()).strip()  # preprocess_multimodal
    conversation = f"{SYSTEM} USER: {human} ASSISTANT: {findings}</s>"
    ids = reference_ids(conversation, sp)
    labels = list(ids)
    labels[0] = IGNORE_INDEX
    cur = 1
    for rnd in conversation.split("</s>"):
        if not rnd:
            break
        parts = rnd.split(" ASSISTANT: ")
        if len(parts) != 2:
            break
        instruction = len(reference_ids(parts[0] + " ASSISTANT: ", sp)) - 2
        labels[cur:cur + instruction] = [IGNORE_INDEX] * len(labels[cur:cur + instruction])
        cur += len(reference_ids(rnd, sp))
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    if cur < max_length and cur != len(ids):
        labels = [IGNORE_INDEX] * len(ids)  # the reference's "tokenization mismatch": whole sample masked
    return ids, labels


@pytest.fixture(scope="module")
def sp_direct():
    sentencepiece = pytest.importorskip("sentencepiece")
    mistral_common = pytest.importorskip("mistral_common")
    return sentencepiece.SentencePieceProcessor(
        model_file=str(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"))


@pytest.mark.parametrize("findings", WHITESPACE_FINDINGS)
def test_masks_equal_the_reference_on_whitespace_heavy_text(llama_tok, sp_direct, findings):
    for reason in WHITESPACE_INDICATIONS:
        record = _record(reason, findings=findings)
        assert record["conversations"][0]["value"] == _loader_human_turn(reason)
        ids, labels = _reference_v1(_loader_human_turn(reason), findings, sp_direct)
        assert any(label != IGNORE_INDEX for label in labels)  # no reference mismatch: a real training sample
        v1 = build_sample(record, "v1", llama_tok, 2048)
        assert isinstance(v1, Sample) and (v1.input_ids, v1.labels) == (ids, labels)
        plain = build_sample(record, "plain", llama_tok, 2048)
        assert isinstance(plain, Sample) and (plain.input_ids, plain.labels) == _reference_plain(findings, sp_direct)


def test_dataset_counts_undecodable_dicom_and_symlinks_out_of_the_folder_instead_of_killing_the_rank(
        tmp_path, tiny_tokenizer):
    from test_images import _compressed_dicom

    from pydicom.uid import JPEGLSLossless

    _compressed_dicom(tmp_path / "jls.dcm", JPEGLSLossless, b"\xff\xd8\xff\xf7 stream")
    (tmp_path / "fake.dcm").write_bytes(b"no preamble, no DICM")
    (tmp_path / "link.png").symlink_to(DATA / "cxr-images" / "iu" / "CXR7_IM-2263-1001.png")
    ds = _dataset(tmp_path, tiny_tokenizer, [_record(None, image=name, rid=name)
                                             for name in ("jls.dcm", "fake.dcm", "link.png")])
    ds.image_folder = tmp_path
    assert [ds[i]["skip"] for i in range(3)] == ["unreadable_image", "unreadable_image", "image_outside_folder"]
    assert "jls.dcm" in ds[0]["detail"] and "fake.dcm" in ds[1]["detail"]
