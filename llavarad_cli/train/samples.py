"""Training samples for the two templates: token ids and labels, exactly as the reference builds them.

``plain`` (stage 1): ``<image>`` + findings + ``\\n``; BOS and the image position are masked, the findings and
the trailing newline are supervised; no EOS.
``v1`` (stage 2): the Vicuna prompt (system, ``USER: <image>\\n…``, `` ASSISTANT:``) is masked; the answer and
``</s>`` are supervised, as the reference's ``preprocess_plain`` / ``preprocess_v1`` mask them.

Unlike the reference, a sample whose mask does not line up with its tokens is not silently zeroed: it comes
back as a :class:`SampleProblem` that the data loader counts and reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from llavarad_cli.data.records import record_turns
from llavarad_cli.prompts import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
    normalise_query,
    render_plain,
    render_v1_inference,
    render_v1_training,
    tokenizer_image_token,
)
from llavarad_cli.skips import Skip


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class SampleProblem:
    """Why a record could not become a training sample (counted and reported, never trained on)."""

    reason: str       # a training name of llavarad_cli.skips
    detail: str = ""


def build_plain(answer: str, tokenizer) -> Sample | SampleProblem:
    """Stage 1: the human turn is replaced by the bare image token (the prompt and reason are dropped)."""
    ids = tokenizer_image_token(render_plain(answer), tokenizer)
    # Positions masked by the reference: len(tokenizer_image_token("<image>")) = BOS + image.
    prefix = tokenizer_image_token(IMAGE_TOKEN, tokenizer)
    if ids[: len(prefix)] != prefix or len(ids) <= len(prefix):
        return SampleProblem(Skip.MASK_MISMATCH, "plain sample does not start with the image prefix")
    labels = [IGNORE_INDEX] * len(prefix) + ids[len(prefix):]
    return Sample(ids, labels)


def build_v1(query: str, answer: str, tokenizer) -> Sample | SampleProblem:
    """Stage 2: supervise only what follows ``ASSISTANT:`` (the answer and ``</s>``).

    The masked prefix is the tokenised inference prompt, and the full sample must start with exactly those ids;
    that is what the model sees at generation time, so a sample where it is not so would teach the wrong thing.
    """
    ids = tokenizer_image_token(render_v1_training(query, answer), tokenizer)
    prompt = tokenizer_image_token(render_v1_inference(query), tokenizer)
    if ids[: len(prompt)] != prompt:
        return SampleProblem(Skip.MASK_MISMATCH, "answer tokens merge with the prompt's last token")
    if tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
        return SampleProblem(Skip.MASK_MISMATCH, "`</s>` is not tokenised as the EOS token")
    if len(ids) <= len(prompt) + 1:
        return SampleProblem(Skip.NO_ANSWER, "empty findings")
    return Sample(ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt):])


def truncate(sample: Sample, max_text_tokens: int) -> Sample | SampleProblem:
    """Keep at most ``max_text_tokens`` text positions (the image token counts as one of them)."""
    if len(sample.input_ids) <= max_text_tokens:
        return sample
    ids, labels = sample.input_ids[:max_text_tokens], sample.labels[:max_text_tokens]
    if IMAGE_TOKEN_INDEX not in ids:
        return SampleProblem(Skip.TRUNCATED_AWAY, "the image token falls beyond model_max_length")
    if all(label == IGNORE_INDEX for label in labels):
        return SampleProblem(Skip.TRUNCATED_AWAY, "no supervised token left within model_max_length")
    return Sample(ids, labels, truncated=True)


def build_sample(record: dict, template: str, tokenizer, max_text_tokens: int) -> Sample | SampleProblem:
    """One record -> ids and labels for ``template``, truncated to the text budget."""
    try:
        human, answer = record_turns(record)
    except ValueError as exc:
        return SampleProblem(Skip.BAD_RECORD, str(exc))
    if not answer.strip():
        return SampleProblem(Skip.NO_ANSWER, "empty findings")
    if template == "plain":
        if IMAGE_TOKEN not in human:
            return SampleProblem(Skip.NO_IMAGE_TOKEN, "the human turn has no <image>")
        built = build_plain(answer, tokenizer)
    elif template == "v1":
        built = build_v1(normalise_query(human), answer, tokenizer)
    else:  # pragma: no cover - the spec only allows the two
        raise ValueError(f"unknown template {template!r}")
    if isinstance(built, SampleProblem):
        return built
    return truncate(built, max_text_tokens)


def text_budget(model_max_length: int, max_positions: int | None, num_patches: int) -> int:
    """Text tokens per sample such that text + image rows fit the LM's position table.

    ``model_max_length`` counts text tokens (as the reference's 2048); the image token expands to
    ``num_patches`` rows, so the LM sees up to ``text - 1 + num_patches`` positions.
    """
    budget = model_max_length
    if max_positions:
        budget = min(budget, max_positions - num_patches + 1)
    if budget < 2:
        raise ValueError(f"the LM has {max_positions} positions, too few for {num_patches} image rows")
    return budget
