"""The exported folder's processor: tokenizer with the image token, open_clip's eval transform as a CLIP image
processor, and a chat template for the Vicuna v1 prompt — all stock transformers classes.

Token ids must equal llavarad's chunk-wise tokenisation around ``<image>`` (``prompts.tokenizer_image_token``):
each chunk is tokenised alone, so the text after the image gets its own SentencePiece prefix space. A stock
tokenizer splits the prompt at the added ``<image>`` token and tokenises the pieces separately; a Metaspace
pre-tokenizer with ``prepend_scheme="first"`` gives only the first piece that space, ``"always"`` gives it to
every piece, which is the chunk-wise rule. ``check_tokenisation`` proves it on probe prompts at every export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llavarad_cli.errors import UserError
from llavarad_cli.prompts import (FINDINGS_PROMPT, IMAGE_TOKEN, IMAGE_TOKEN_INDEX,
                                  V1_ROLES, V1_SEP, V1_SEP2, V1_SYSTEM, tokenizer_image_token, user_turn)

#: open_clip's eval normalisation (OpenAI CLIP mean/std), the released tower's preprocessing.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PIL_BICUBIC = 3
#: The opt-in processor module copied into the export (transformers' ``auto_map``).
REMOTE_PROCESSOR_FILE = "processing_llavarad.py"

#: Reasons the tokenisation self-check renders (none, short, runs of spaces and newlines, non-ASCII).
PROBE_REASONS = (None, "", "shortness of breath", "Chest pain.  Evaluate for pneumonia.",
                 "  cough\n\nfever \n dyspnea  ", "\tpost-op ___ , r/o PTX\r\n", "fièvre 38°C")


def _jinja_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Jinja string literal


def chat_template(template: str) -> str:
    """Vicuna v1 (``SYSTEM USER: <image>\\n{text} ASSISTANT:``) or, for a stage-1 checkpoint, the bare image.

    The user text is used as given, newlines turned into spaces and the ends stripped, as llavarad treats a
    stored query; an image item puts ``<image>\\n`` in front. A user turn with no text asks for the findings.
    Earlier assistant turns end with ``</s>``, as in LLaVA's v1 conversation.
    """
    if template == "plain":
        return "{{- '" + IMAGE_TOKEN + "' -}}"
    user, assistant = V1_ROLES
    return (
        "{%- set ns = namespace(system=" + _jinja_string(V1_SYSTEM) + ") -%}"
        "{%- for m in messages if m.role == 'system' -%}"
        "{%- set ns.system = m.content if m.content is string else "
        "(m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')) -%}"
        "{%- endfor -%}"
        "{{- ns.system -}}"
        "{%- for m in messages if m.role != 'system' -%}"
        "{%- if m.content is string -%}"
        "{%- set has_image = '" + IMAGE_TOKEN + "' in m.content -%}"
        "{%- set text = m.content | replace('" + IMAGE_TOKEN + "', '') -%}"
        "{%- else -%}"
        "{%- set has_image = (m.content | selectattr('type', 'equalto', 'image') | list | length) > 0 -%}"
        "{%- set text = m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
        "{%- endif -%}"
        "{%- set text = text | replace('\\r\\n', ' ') | replace('\\n', ' ') | replace('\\r', ' ') | trim -%}"
        "{%- if m.role == 'user' -%}"
        "{%- if not text -%}{%- set text = " + _jinja_string(FINDINGS_PROMPT) + " -%}{%- endif -%}"
        "{{- " + _jinja_string(V1_SEP + user + ": ") + " -}}"
        "{%- if has_image -%}{{- '" + IMAGE_TOKEN + "\\n' -}}{%- endif -%}"
        "{{- text -}}"
        "{%- else -%}"
        "{{- " + _jinja_string(V1_SEP + assistant + ": ") + " + text + " + _jinja_string(V1_SEP2) + " -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + _jinja_string(V1_SEP + assistant + ":") + " -}}{%- endif -%}"
    )


def user_text(reason: object) -> str:
    """The paper's user text for a reason (None: the plain findings request), without the image token."""
    return user_turn(reason)[len(IMAGE_TOKEN) + 1:]


def image_processor_config(image_size: int) -> dict[str, Any]:
    """open_clip's eval transform: shortest side to ``image_size`` with PIL bicubic, centre crop, RGB, /255,
    OpenAI-CLIP mean/std."""
    return {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
            "resample": PIL_BICUBIC, "do_resize": True, "do_center_crop": True, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
            "do_convert_rgb": True}


#: Where an export keeps the SentencePiece files llavarad itself tokenises with (for `infer --model OUT`).
SENTENCEPIECE_DIR = "llavarad_tokenizer"


def write_tokenizer(tokenizer, out: Path, image_token_id: int) -> None:
    """Save ``tokenizer`` with ``<image>`` as a special token of id ``image_token_id`` and every piece between
    added tokens getting its own prefix space; left padding, for batched generation."""
    if hasattr(tokenizer, "sp") and hasattr(tokenizer, "model_file"):
        _write_sentencepiece_tokenizer(tokenizer, Path(out), image_token_id)
        return
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"tokenizer {type(tokenizer).__name__} has no `tokenizer.json` form; cannot be exported")
    tokenizer.save_pretrained(str(out))
    tok_path = Path(out) / "tokenizer.json"
    data = json.loads(tok_path.read_text(encoding="utf-8"))
    if any(t.get("content") == IMAGE_TOKEN for t in data.get("added_tokens", [])) or \
            IMAGE_TOKEN in (data.get("model", {}).get("vocab") or {}):
        raise UserError(f"the tokenizer already has a `{IMAGE_TOKEN}` token; cannot add the image token")
    # tokenizers renumbers an added token that its model's vocabulary lacks; in the vocabulary it keeps its id
    # (the model never produces it: added tokens are split off before the model sees the text).
    vocab = data.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        vocab[IMAGE_TOKEN] = image_token_id
    elif isinstance(vocab, list) and len(vocab) == image_token_id:
        vocab.append([IMAGE_TOKEN, 0.0])
    else:
        raise UserError(f"cannot give the image token id {image_token_id} in this tokenizer "
                        f"({data.get('model', {}).get('type')} model)")
    data.setdefault("added_tokens", []).append(
        {"id": image_token_id, "content": IMAGE_TOKEN, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True})
    _prefix_every_piece(data.get("pre_tokenizer"))
    tok_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    config_path = Path(out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.setdefault("added_tokens_decoder", {})[str(image_token_id)] = {
        "content": IMAGE_TOKEN, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": True}
    config["extra_special_tokens"] = {**(config.get("extra_special_tokens") or {}), "image_token": IMAGE_TOKEN}
    config["padding_side"] = "left"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_sentencepiece_tokenizer(tokenizer, out: Path, image_token_id: int) -> None:
    from llavarad_cli.model.export_sp import sentencepiece_tokenizer_json

    if tokenizer.add_eos_token or not tokenizer.add_bos_token:
        raise UserError("cannot export a SentencePiece tokenizer that adds EOS or no BOS")
    added = {content: index for content, (index, _special) in tokenizer._added.items()}
    if IMAGE_TOKEN in added:
        raise UserError(f"the tokenizer already has a `{IMAGE_TOKEN}` token; cannot add the image token")
    added[IMAGE_TOKEN] = image_token_id
    data = sentencepiece_tokenizer_json(Path(tokenizer.model_file), tokenizer.bos_token, added)
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    decoder = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
               for t in data["added_tokens"]}
    config = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "bos_token": tokenizer.bos_token,
              "eos_token": tokenizer.eos_token, "unk_token": tokenizer.unk_token, "pad_token": tokenizer.pad_token,
              "clean_up_tokenization_spaces": bool(tokenizer.clean_up_tokenization_spaces),
              "model_max_length": tokenizer.model_max_length or 4096, "padding_side": "left",
              "added_tokens_decoder": decoder, "extra_special_tokens": {"image_token": IMAGE_TOKEN}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    tokenizer.save_pretrained(out / SENTENCEPIECE_DIR)


def _prefix_every_piece(pre_tokenizer: dict | None) -> None:
    if not isinstance(pre_tokenizer, dict):
        return
    if pre_tokenizer.get("type") == "Metaspace" and pre_tokenizer.get("prepend_scheme") == "first":
        pre_tokenizer["prepend_scheme"] = "always"
    for child in pre_tokenizer.get("pretokenizers") or []:
        _prefix_every_piece(child)


def write_processor(out: Path, image_size: int, patch_size: int, template: str) -> None:
    """``preprocessor_config.json``, ``processor_config.json`` and the chat template, for ``AutoProcessor``."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(**image_processor_config(image_size)),
                               tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                               chat_template=chat_template(template))
    processor.save_pretrained(str(out))
    # Opt-in exact crop rounding (see processing_llavarad.py); without trust_remote_code the stock class loads.
    source = Path(__file__).with_name(REMOTE_PROCESSOR_FILE)
    (Path(out) / REMOTE_PROCESSOR_FILE).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    config_path = Path(out) / "processor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoProcessor": f"{REMOTE_PROCESSOR_FILE[:-3]}.LlavaRadProcessor"}
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def expand_image(ids: list[int], image_token_id: int, n_image_tokens: int) -> list[int]:
    """llavarad's ids with the ``IMAGE_TOKEN_INDEX`` sentinel replaced by the image token's N positions."""
    out: list[int] = []
    for i in ids:
        out.extend([image_token_id] * n_image_tokens if i == IMAGE_TOKEN_INDEX else [i])
    return out


def probe_messages(reason: object) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(reason)}]}]


def check_tokenisation(out: Path, original_tokenizer, prompt_of, image_token_id: int, n_image_tokens: int) -> None:
    """The exported processor's prompt and ids equal llavarad's for every probe reason (else nothing is kept)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(out), trust_remote_code=True)
    for reason in PROBE_REASONS:
        query = user_turn(reason)
        expected_prompt = prompt_of(query)
        prompt = processor.apply_chat_template(probe_messages(reason), add_generation_prompt=True, tokenize=False)
        if prompt != expected_prompt:
            raise RuntimeError(f"chat template renders {prompt!r}, llavarad {expected_prompt!r}")
        expanded = prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens)
        got = processor.tokenizer(expanded).input_ids
        want = expand_image(tokenizer_image_token(expected_prompt, original_tokenizer), image_token_id,
                            n_image_tokens)
        if got != want:
            raise UserError(f"the exported tokenizer does not reproduce llavarad's token ids for the reason "
                            f"{reason!r}; this tokenizer ({type(original_tokenizer).__name__}) cannot be exported")
