"""Why an input item was left out: one name per reason, and the words a summary shows for it.

`prepare` (every source), `infer` and training all count what they could not use; they count it under these
names, so the same problem reads the same in `prepare-summary.json`, in `infer`'s notes and in a training run's
`skipped` counts. Names are snake_case because they are JSON keys.
"""

from __future__ import annotations


class Skip:
    """The reason names. Plain strings (not an Enum): they are JSON keys, Counter keys and pickled to DataLoader
    workers, and an Enum's hash differs from its value's, so ``counts["bad_row"]`` would miss."""

    # reading a table, an annotation file or a records file
    BAD_ROW = "bad_row"
    BAD_RECORD = "bad_record"
    DUPLICATE = "duplicate"
    # selection rules
    NO_SPLIT = "no_split"
    NOT_FRONTAL = "not_frontal"
    NOT_RULE_BASED = "not_rule_based"
    # report text
    NO_REPORT = "no_report"
    UNREADABLE_REPORT = "unreadable_report"
    EMPTY_REPORT = "empty_report"
    NO_FINDINGS = "no_findings"
    # images
    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"
    IMAGE_OUTSIDE_FOLDER = "image_outside_folder"
    # training samples
    MASK_MISMATCH = "mask_mismatch"
    NO_ANSWER = "no_answer"
    NO_IMAGE_TOKEN = "no_image_token"
    TRUNCATED_AWAY = "truncated_away"
    # not a skip: a training sample kept with its text cut at model_max_length, counted beside the skips
    TRUNCATED = "truncated"


#: The words the summary tables show; every name above has one.
LABELS = {
    Skip.BAD_ROW: "malformed input row",
    Skip.BAD_RECORD: "malformed record",
    Skip.DUPLICATE: "duplicate record",
    Skip.NO_SPLIT: "no split entry",
    Skip.NOT_FRONTAL: "lateral or unknown view",
    Skip.NOT_RULE_BASED: "test record not rule-based",
    Skip.NO_REPORT: "no report",
    Skip.UNREADABLE_REPORT: "unreadable report",
    Skip.EMPTY_REPORT: "empty report",
    Skip.NO_FINDINGS: "no findings",
    Skip.MISSING_IMAGE: "image missing on disk",
    Skip.UNREADABLE_IMAGE: "unreadable image",
    Skip.IMAGE_OUTSIDE_FOLDER: "image path outside the image folder",
    Skip.MASK_MISMATCH: "label mask does not line up with the tokens",
    Skip.NO_ANSWER: "no answer text",
    Skip.NO_IMAGE_TOKEN: "no <image> in the prompt",
    Skip.TRUNCATED_AWAY: "nothing supervised left after truncation",
    Skip.TRUNCATED: "kept, text truncated",
}

#: What a training rank counts, in the order its counts travel between ranks (the last one is not a skip).
TRAINING = (Skip.MISSING_IMAGE, Skip.UNREADABLE_IMAGE, Skip.IMAGE_OUTSIDE_FOLDER, Skip.MASK_MISMATCH,
            Skip.NO_ANSWER, Skip.NO_IMAGE_TOKEN, Skip.TRUNCATED_AWAY, Skip.BAD_RECORD)


def label(name: str) -> str:
    """The summary's words for a reason name; a name outside the vocabulary is a bug, hence ValueError."""
    try:
        return LABELS[name]
    except KeyError:
        raise ValueError(f"unknown skip reason {name!r}") from None
