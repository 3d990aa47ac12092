"""F1-RadGraph from RadGraph annotations: the "partial" reward the paper reported (plus "simple" and "complete").

An annotation is RadGraph's output for one report: ``{"entities": {id: {"tokens", "label", "relations": [[type,
target id], ...]}}}``. Follows LLaVA-Rad's own copy of the reward (rrg_eval/f1radgraph.py): simple and partial
compare entity tokens case-sensitively, complete lower-cases. (Upstream radgraph lower-cases all three levels since
2026-05, so "latest radgraph" is not "paper radgraph".)
"""

from __future__ import annotations

from typing import Mapping

REWARD_LEVELS = ("simple", "partial", "complete")


def entity_set(annotation: Mapping, level: str) -> set:
    entities = annotation.get("entities", {}) or {}
    out: set = set()
    for ent in entities.values():
        if level == "simple":
            out.add((ent["tokens"], ent["label"]))
        elif level == "partial":
            # one element per entity, flagged when it takes part in at least one relation
            out.add((ent["tokens"], ent["label"], True) if ent.get("relations") else (ent["tokens"], ent["label"]))
        elif level == "complete":
            if ent.get("relations"):
                for rel_type, target in ent["relations"]:
                    tgt = entities.get(str(target)) or entities.get(target)
                    out.add((ent["tokens"].lower(), ent["label"], rel_type,
                             tgt["tokens"].lower() if tgt else None))
            else:
                out.add((ent["tokens"].lower(), ent["label"]))
        else:
            raise ValueError(f"unknown reward level {level!r}; expected one of {REWARD_LEVELS}")
    return out


def reward(hyp_annotation: Mapping | None, ref_annotation: Mapping | None, level: str = "partial") -> float:
    """F1 between the two entity sets; 0 when either report is empty or has no entities."""
    if not hyp_annotation or not ref_annotation:
        return 0.0
    if not hyp_annotation.get("entities") or not ref_annotation.get("entities"):
        return 0.0
    hyp, ref = entity_set(hyp_annotation, level), entity_set(ref_annotation, level)
    common = len(hyp & ref)
    precision = common / len(hyp) if hyp else 0.0
    recall = common / len(ref) if ref else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
