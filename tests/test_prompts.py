"""The prompt wording: one place, the reference's rules for the reason."""

from __future__ import annotations

import math

from llavarad_cli import prompts


def test_two_wordings_exactly():
    assert prompts.user_turn(None) == "<image>\nProvide a description of the findings in the radiology image."
    assert prompts.user_turn("cough\nfever") == (
        "<image>\nProvide a description of the findings in the radiology image given the following indication: "
        "cough fever")


def test_reason_rules_follow_the_reference_loader():
    # Any string is a reason (a blank one too); null and NaN (pandas) are none; only newlines are changed.
    assert prompts.clean_reason("  a\r\nb  c ") == "  a b  c "
    assert prompts.user_turn("").endswith("given the following indication: ")
    assert prompts.user_turn(math.nan) == prompts.user_turn(None)
    assert prompts.conversations(None, "Clear.")[1] == {"from": "gpt", "value": "Clear."}


def test_v1_and_plain_rendering():
    query = prompts.user_turn("pain")
    rendered = prompts.render_v1_inference(query)
    assert rendered == (prompts.V1_SYSTEM + " USER: " + query + " ASSISTANT:")
    assert prompts.render_v1_training(query, "Clear.") == rendered + " Clear.</s>"
    assert prompts.render_plain("Clear.") == "<image>Clear.\n"
    assert prompts.normalise_query("Describe.\n<image>") == "<image>\nDescribe."
