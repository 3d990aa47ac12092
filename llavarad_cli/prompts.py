"""Prompt wording and conversation templates: the one source of truth shared by prepare, train and infer.

Strings follow LLaVA-Rad's released code exactly: its two findings wordings and the Vicuna v1 conversation.
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
#: Sentinel id put where the image embeddings go; never a real vocabulary id.
IMAGE_TOKEN_INDEX = -200
#: Label value ignored by the loss.
IGNORE_INDEX = -100

FINDINGS_PROMPT = "Provide a description of the findings in the radiology image."
FINDINGS_PROMPT_WITH_REASON = (
    "Provide a description of the findings in the radiology image given the following indication: {reason}"
)

#: Vicuna v1 (``conv_vicuna_v1``): "curious user", not LLaVA's "curious human".
V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
V1_ROLES = ("USER", "ASSISTANT")
V1_SEP = " "
V1_SEP2 = "</s>"


def clean_reason(reason: object) -> str | None:
    """As the reference loaders do: any string reason is used, each newline turned into a space and nothing
    else changed (a blank string still gets the indication wording); anything else (null, NaN) means none."""
    if not isinstance(reason, str):
        return None
    return reason.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def user_turn(reason: object) -> str:
    """The human turn stored in records: ``<image>\\n`` followed by one of the two wordings."""
    reason = clean_reason(reason)
    text = FINDINGS_PROMPT if reason is None else FINDINGS_PROMPT_WITH_REASON.format(reason=reason)
    return f"{IMAGE_TOKEN}\n{text}"


def conversations(reason: str | None, findings: str) -> list[dict[str, str]]:
    """The LLaVA conversation pair for one record."""
    return [{"from": "human", "value": user_turn(reason)}, {"from": "gpt", "value": findings}]


def normalise_query(query: str) -> str:
    """Strip any ``<image>`` from a stored query and put exactly one ``<image>\\n`` in front (as eval does)."""
    text = query.replace(IMAGE_TOKEN, "").strip()
    return f"{IMAGE_TOKEN}\n{text}"


def render_v1_inference(query: str) -> str:
    """``SYSTEM USER: <image>\\n… ASSISTANT:`` with no trailing space."""
    user, assistant = V1_ROLES
    return f"{V1_SYSTEM}{V1_SEP}{user}: {normalise_query(query)}{V1_SEP}{assistant}:"


def render_v1_training(query: str, answer: str) -> str:
    """The inference prompt continued by `` {answer}</s>`` (only the answer and ``</s>`` are supervised)."""
    return f"{render_v1_inference(query)} {answer}{V1_SEP2}"


def render_plain(answer: str) -> str:
    """Stage-1 sample: the human turn is replaced by the bare image token; no EOS."""
    return f"{IMAGE_TOKEN}{answer}\n"


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """Tokenise ``prompt`` around ``<image>`` as the reference does.

    Each chunk is tokenised on its own (each gets the tokenizer's BOS and SentencePiece prefix space); the BOS
    is kept once at the front and ``IMAGE_TOKEN_INDEX`` is put between chunks.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        ids.append(bos)
        offset = 1
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids
