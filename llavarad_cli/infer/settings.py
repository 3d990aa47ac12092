"""What ``infer`` runs with, and its defaults: the model to load and how to generate.

Light on purpose (no torch): the CLI builds its option defaults from these classes at import time, so
``llavarad --help`` shows exactly what the library uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from llavarad_cli.model.shapes import RELEASED_MODEL

#: Reports per generate() call: fits a 7B model in bf16/fp16 with 256 new tokens on a 24 GB GPU.
DEFAULT_BATCH_SIZE = 8


@dataclass
class GenerationSettings:
    """Greedy, 256 new tokens, by default: how the LLaVA-Rad paper generated its evaluation reports."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: Optional[float] = None
    num_beams: int = 1
    seed: Optional[int] = None                  # seeds torch before generating (matters when sampling)
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                               "use_cache": True, **self.extra}
        if self.temperature > 0:
            out.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                out["top_p"] = self.top_p
        else:
            # Explicitly unset, so a checkpoint's generation_config cannot turn sampling back on.
            out.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return out

    def cli_args(self) -> list[str]:
        """The same settings as ``llavarad infer`` options (for the ``--gpus`` worker processes)."""
        args = ["--max-new-tokens", str(self.max_new_tokens), "--temperature", repr(self.temperature),
                "--num-beams", str(self.num_beams)]
        if self.top_p is not None:
            args += ["--top-p", repr(self.top_p)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        return args


@dataclass
class ModelChoice:
    """Which model to load and how; ``model_base`` None = the released base LM or the checkpoint's recorded one."""

    model: str = RELEASED_MODEL
    model_base: Optional[str] = None
    device: Optional[str] = None
    dtype: Optional[str] = None
    attn: str = "sdpa"
    trust_pickle: bool = False

    def cli_args(self) -> list[str]:
        args = ["--model", self.model, "--attn", self.attn]
        if self.model_base:
            args += ["--model-base", self.model_base]
        if self.dtype:
            args += ["--dtype", self.dtype]
        if self.trust_pickle:
            args.append("--trust-pickle")
        return args
