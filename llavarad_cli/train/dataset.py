"""Training data: records -> (ids, labels, pixels) in DataLoader workers, a resumable sampler, the collator.

Records are read once (a JSON list written by ``llavarad prepare``) and packed into one buffer; decoding a
record, tokenisation, image reading and the vision transform happen per item, inside DataLoader workers. A record that cannot be used (unreadable image,
mask mismatch, no findings) is dropped from its batch and counted, never replaced by a grey square or a
zeroed loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llavarad_cli.data.images import ImageProblem, load_image, resolve_image_path
from llavarad_cli.data.records import read_records
from llavarad_cli.errors import UserError
from llavarad_cli.prompts import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llavarad_cli.train.samples import SampleProblem, build_sample


class PackedRecords:
    """Records kept as one buffer of compact JSON plus offsets; item ``i`` is decoded on access.

    A list of 400k dicts costs gigabytes of Python objects per rank, and DataLoader workers touching their
    reference counts copy those pages one by one; a single byte buffer costs the JSON size once and stays
    shared with forked workers.
    """

    #: What training reads of a record; the rest (findings again, impression, labels, ...) is not kept.
    FIELDS = ("id", "image", "conversations")

    def __init__(self, records: list[dict]):
        import numpy as np

        blobs = [json.dumps({k: r[k] for k in self.FIELDS if k in r}, ensure_ascii=False,
                            separators=(",", ":")).encode("utf-8") for r in records]
        self._offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in blobs], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        start, end = self._offsets[index], self._offsets[index + 1]
        return json.loads(self._buffer[start:end].tobytes())


def load_records(path: Path) -> PackedRecords:
    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no records in the file", hint="records come from `llavarad prepare`")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict) or "image" not in r), None)
    if bad is not None:
        raise UserError(f"{path}: record {bad} has no `image` field", hint="records come from `llavarad prepare`")
    return PackedRecords(records)


class TrainingRecords:
    """Map-style dataset: item i -> dict(input_ids, labels, pixel_values) or dict(skip=reason, id=...)."""

    def __init__(self, records: list[dict], image_folder: Path, tokenizer, template: str, max_text_tokens: int,
                 image_transform: Callable):
        self.records = records
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.template = template
        self.max_text_tokens = max_text_tokens
        self.image_transform = image_transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rid = str(record.get("id", index))
        sample = build_sample(record, self.template, self.tokenizer, self.max_text_tokens)
        if isinstance(sample, SampleProblem):
            return {"skip": sample.reason, "detail": sample.detail, "id": rid}
        try:
            # The same reader as prepare and infer: JPEG/PNG (8/16-bit) and DICOM, paths kept inside the folder.
            image = load_image(resolve_image_path(self.image_folder, record["image"]))
        except ImageProblem as problem:
            return {"skip": problem.kind, "detail": problem.detail, "id": rid}
        return {"input_ids": sample.input_ids, "labels": sample.labels, "pixel_values": self.image_transform(image),
                "truncated": sample.truncated, "id": rid}


@dataclass
class Collator:
    """Right-pads ids with ``pad_id`` and labels with -100; the mask marks real positions (not ``ids != pad``)."""

    pad_id: int

    def __call__(self, items: list[dict]) -> dict:
        import torch

        kept = [it for it in items if "skip" not in it]
        skipped = [{"id": it["id"], "reason": it["skip"], "detail": it.get("detail", "")}
                   for it in items if "skip" in it]
        batch: dict = {"skipped": skipped, "truncated": sum(bool(it.get("truncated")) for it in kept),
                       "ids": [it["id"] for it in kept]}
        if not kept:
            return batch
        width = max(len(it["input_ids"]) for it in kept)
        ids = torch.full((len(kept), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(kept), width), dtype=torch.long)
        for row, it in enumerate(kept):
            n = len(it["input_ids"])
            ids[row, :n] = torch.tensor(it["input_ids"])
            labels[row, :n] = torch.tensor(it["labels"])
            mask[row, :n] = 1
        batch.update(input_ids=ids, labels=labels, attention_mask=mask,
                     pixel_values=torch.stack([it["pixel_values"] for it in kept]))
        return batch


class EpochPlan:
    """Which records each rank reads at each micro-step: a seeded permutation per epoch, no state besides step.

    Every optimizer step consumes exactly ``global_batch_size`` records (the few left over at the end of an
    epoch are dropped, differently each epoch), so the data position is a function of the global step alone and
    a resumed run reads exactly what an uninterrupted run would have read.
    """

    def __init__(self, num_records: int, seed: int, world_size: int, rank: int, micro_batch: int, grad_accum: int):
        self.num_records = num_records
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum
        self.global_batch = micro_batch * grad_accum * world_size
        self.steps_per_epoch = num_records // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"the global batch ({self.global_batch} samples) is larger than the {num_records} "
                            "training records", hint="lower train.global_batch_size")

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps if max_steps else max(1, math.ceil(epochs * self.steps_per_epoch))

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def indices(self, start_step: int, end_step: int) -> list[int]:
        """This rank's record indices for optimizer steps [start_step, end_step), in micro-batch order."""
        out: list[int] = []
        for step in range(start_step, end_step):
            epoch, in_epoch = divmod(step, self.steps_per_epoch)
            perm = self._perm(epoch)
            base = in_epoch * self.global_batch
            # A step's global batch is split rank-major per micro-step: micro m of rank r reads a contiguous slice.
            for micro in range(self.grad_accum):
                offset = base + (micro * self.world_size + self.rank) * self.micro_batch
                out.extend(perm[offset: offset + self.micro_batch])
        return out

    def _perm(self, epoch: int) -> list[int]:
        import torch

        cached = getattr(self, "_cache", None)
        if cached and cached[0] == epoch:
            return cached[1]
        gen = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        perm = torch.randperm(self.num_records, generator=gen).tolist()
        self._cache = (epoch, perm)
        return perm


def make_loader(dataset: TrainingRecords, plan: EpochPlan, start_step: int, end_step: int, num_workers: int,
                pad_id: int, seed: int):
    """A DataLoader over this rank's micro-batches for steps [start_step, end_step).

    It has its own generator so that starting it does not consume the global torch RNG (which also drives
    dropout): a resumed run's RNG stream stays identical to the uninterrupted run's.
    """
    import torch
    from torch.utils.data import DataLoader

    indices = plan.indices(start_step, end_step)
    gen = torch.Generator().manual_seed(seed + 17 * plan.rank + start_step)
    return DataLoader(dataset, batch_size=plan.micro_batch, sampler=indices, num_workers=num_workers,
                      collate_fn=Collator(pad_id), generator=gen, persistent_workers=False,
                      pin_memory=torch.cuda.is_available(), drop_last=False)


def count_positions(batch: dict, num_patches: int) -> int:
    """LM positions actually processed in a batch: real text tokens plus the image rows."""
    if "input_ids" not in batch:
        return 0
    text = int(batch["attention_mask"].sum())
    images = int((batch["input_ids"] == IMAGE_TOKEN_INDEX).sum())
    return text + images * (num_patches - 1)
