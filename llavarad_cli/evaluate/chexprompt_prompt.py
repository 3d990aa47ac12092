"""CheXprompt's question and the parsing of its answer (the paper's GPT-4 error-counting metric).

The wording below is this project's own rendering of CheXprompt's structure: an expert-radiologist system
instruction, the six error types (A-F) counted separately for clinically significant and insignificant errors,
and a fixed two-line answer format. It carries no few-shot examples, so counts can differ from the paper's
GPT-4 runs. For exact parity, put the original prompt (MIT-licensed, microsoft/chexprompt) in a JSON file
``{"system": ..., "user": ... "{reference}" ... "{candidate}" ...}`` and pass ``--chexprompt-prompt FILE``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from llavarad_cli.errors import UserError

ERROR_TYPES = {
    "A": "false_positive_finding",
    "B": "omission_finding",
    "C": "incorrect_location",
    "D": "incorrect_severity",
    "E": "false_positive_comparison",
    "F": "omission_comparison",
}
SIGNIFICANT_HEADER = "Number of clinically significant errors by type:"
INSIGNIFICANT_HEADER = "Number of clinically insignificant errors by type:"

SYSTEM = (
    "You are an expert chest radiologist. You compare a candidate findings section, written for a chest X-ray, "
    "with the reference findings section written by a radiologist for the same study, and you count the "
    "candidate's errors of each type, separately for clinically significant and clinically insignificant errors. "
    "Answer only in the exact format you are given."
)

USER_TEMPLATE = (
    "A clinically significant error is one that would likely change the patient's treatment, management or "
    "outcome; any other error is clinically insignificant.\n"
    "Error types:\n"
    "(A) the candidate reports a finding that the reference does not contain;\n"
    "(B) the candidate omits a finding that the reference contains;\n"
    "(C) the candidate gives the wrong location or position of a finding;\n"
    "(D) the candidate gives the wrong severity of a finding;\n"
    "(E) the candidate mentions a comparison with a prior study that the reference does not make;\n"
    "(F) the candidate omits a comparison that the reference makes to describe a change from a prior study.\n"
    "Answer with exactly these two lines, an integer count in place of each n:\n"
    f"{SIGNIFICANT_HEADER} [(A, n), (B, n), (C, n), (D, n), (E, n), (F, n)]\n"
    f"{INSIGNIFICANT_HEADER} [(A, n), (B, n), (C, n), (D, n), (E, n), (F, n)]\n\n"
    'Reference Findings: """{reference}"""\n'
    'Candidate Findings: """{candidate}"""\n'
    "Errors:"
)


class Prompt:
    def __init__(self, system: str = SYSTEM, user: str = USER_TEMPLATE):
        if "{reference}" not in user or "{candidate}" not in user:
            raise UserError("the CheXprompt user template must contain {reference} and {candidate}")
        self.system, self.user = system, user

    @classmethod
    def from_file(cls, path: Path) -> "Prompt":
        from llavarad_cli.io_utils import read_json

        data = read_json(path)
        if not isinstance(data, dict) or "user" not in data:
            raise UserError(f"{path}: expected a JSON object with \"system\" and \"user\" (the user text holds "
                            "{reference} and {candidate})")
        return cls(data.get("system", ""), data["user"])

    def messages(self, reference: str, candidate: str) -> list[dict]:
        # str.replace, not str.format: report text may contain braces
        user = self.user.replace("{reference}", reference).replace("{candidate}", candidate)
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": user}]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.system, self.user]).encode()).hexdigest()[:16]


def _parse_list(text: str) -> dict[str, int] | None:
    try:
        pairs = text.strip().replace("),", "|").replace("(", "").replace(")", "").replace("[", "").replace("]", "")
        out = {}
        for item in pairs.split("|"):
            if not item.strip():
                continue
            letter, value = item.split(",")
            letter = letter.strip()
            out[ERROR_TYPES.get(letter, letter)] = int(value.strip())
        return out or None
    except (ValueError, AttributeError):
        return None


def parse_rating(completion: str | None) -> dict | None:
    """{"clinically_significant": {...}, "clinically_insignificant": {...}} or None when the answer is unusable."""
    if not completion or SIGNIFICANT_HEADER not in completion or INSIGNIFICANT_HEADER not in completion:
        return None
    completion = re.split(r"Explanation", completion, maxsplit=1)[0]
    after = completion.split(SIGNIFICANT_HEADER, 1)[1]
    significant, _, insignificant = after.partition(INSIGNIFICANT_HEADER)
    sig, insig = _parse_list(significant), _parse_list(insignificant)
    if sig is None or insig is None or set(sig) != set(ERROR_TYPES.values()) or set(insig) != set(ERROR_TYPES.values()):
        return None
    return {"clinically_significant": sig, "clinically_insignificant": insig}
