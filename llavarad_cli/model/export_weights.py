"""LLaVA-Rad's weights under transformers' ``LlavaForConditionalGeneration`` names, streamed to safetensors.

The mapping is a plan of ``(name, shape, dtype, produce)`` entries; ``produce`` returns the tensor only when
its turn comes to be written, so the export holds the loaded model (one copy of the weights) plus at most the
one tensor being written: qkv splits and the dtype are views of the loaded weights, and only the two
vocabulary matrices that gain the image token's row are built anew, one at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from llavarad_cli.errors import UserError

#: safetensors' names for torch dtypes (the ones a model export can hold).
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
#: Shard size limit (bytes); transformers' own default for save_pretrained.
MAX_SHARD_BYTES = 5 * 1024**3
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

#: timm block parameter -> Dinov2Layer parameter (qkv is split apart separately).
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_TRUNK_RENAMES = {
    "cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
}
VISION_PREFIX = "model.vision_tower."
PROJECTOR_PREFIX = "model.multi_modal_projector."
LM_PREFIX = "model.language_model."


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


def _fixed(tensor: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    return lambda: tensor.detach().to(dtype)


def _planned(name: str, tensor: torch.Tensor, dtype: torch.dtype, produce=None) -> PlannedTensor:
    return PlannedTensor(name, tuple(tensor.shape), dtype, produce or _fixed(tensor, dtype))


def plan_vision(trunk: torch.nn.Module, dtype: torch.dtype) -> list[PlannedTensor]:
    """The timm DINOv2 trunk as ``Dinov2Model``: fused qkv split into q/k/v rows, ``ls*.gamma`` -> lambda1,
    the final norm kept (transformers' LLaVA reads ``hidden_states[-2]``, which that norm never touches)."""
    state = trunk.state_dict()
    plan: list[PlannedTensor] = []
    width = int(trunk.embed_dim)
    for key, value in state.items():
        if key in _TRUNK_RENAMES:
            plan.append(_planned(VISION_PREFIX + _TRUNK_RENAMES[key], value, dtype))
            continue
        parts = key.split(".", 2)
        if parts[0] != "blocks" or len(parts) != 3:
            raise UserError(f"vision tower weight `{key}` has no counterpart in transformers' Dinov2Model")
        layer, rest = f"{VISION_PREFIX}encoder.layer.{parts[1]}.", parts[2]
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
                # Rows [i*W, (i+1)*W) of timm's fused projection are q, k, v in that order.
                piece = value[i * width:(i + 1) * width]
                plan.append(_planned(f"{layer}attention.{part}.{kind}", piece, dtype))
        elif rest in _BLOCK_RENAMES:
            plan.append(_planned(layer + _BLOCK_RENAMES[rest], value, dtype))
        else:
            raise UserError(f"vision tower weight `{key}` has no counterpart in transformers' Dinov2Model")
    # Dinov2Model has a mask token for masked-image pre-training; LLaVA never uses it. Zeros, deterministic.
    plan.append(PlannedTensor(VISION_PREFIX + "embeddings.mask_token", (1, width), dtype,
                              lambda: torch.zeros((1, width), dtype=dtype)))
    return plan


def plan_projector(projector: torch.nn.Module, dtype: torch.dtype) -> list[PlannedTensor]:
    """``mlp2x_gelu`` (Linear, GELU, Linear) is ``LlavaMultiModalProjector``'s linear_1 / linear_2."""
    names = {"0": "linear_1", "2": "linear_2"}
    plan = []
    for key, value in projector.state_dict().items():
        index, kind = key.split(".", 1)
        plan.append(_planned(f"{PROJECTOR_PREFIX}{names[index]}.{kind}", value, dtype))
    return plan


def _with_zero_row(matrix: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    def produce() -> torch.Tensor:
        out = torch.zeros((matrix.shape[0] + 1, matrix.shape[1]), dtype=dtype)
        out[:-1] = matrix.detach()
        return out
    return produce


def plan_lm(lm: torch.nn.Module, dtype: torch.dtype) -> list[PlannedTensor]:
    """A ``LlamaForCausalLM``: ``model.*`` -> ``model.language_model.*``; the input embedding and ``lm_head`` get
    one zero row for the image token (its embedding is always replaced by image features; its logit is 0,
    and the generation config suppresses it)."""
    plan = []
    embed_name = "model.embed_tokens.weight"
    for key, value in lm.state_dict().items():
        if key == "lm_head.weight" or key == embed_name:
            name = "lm_head.weight" if key == "lm_head.weight" else LM_PREFIX + "embed_tokens.weight"
            shape = (value.shape[0] + 1, value.shape[1])
            plan.append(PlannedTensor(name, shape, dtype, _with_zero_row(value, dtype)))
        elif key.startswith("model."):
            plan.append(_planned(LM_PREFIX + key[len("model."):], value, dtype))
        else:
            raise UserError(f"language model weight `{key}` has no place in transformers' LLaVA")
    if "lm_head.weight" not in {p.name for p in plan}:
        # A tied LM keeps one matrix in its state dict; LLaVA's config here is untied, so write it twice.
        embed = lm.get_input_embeddings().weight
        plan.append(PlannedTensor("lm_head.weight", (embed.shape[0] + 1, embed.shape[1]), dtype,
                                  _with_zero_row(embed, dtype)))
    return plan


def check_plan(plan: list[PlannedTensor], expected: dict[str, tuple[int, ...]]) -> None:
    """The plan must name exactly the parameters transformers will build, with their shapes (a bug if not)."""
    got = {p.name: p.shape for p in plan}
    if len(got) != len(plan):
        raise RuntimeError("export plan names a tensor twice")
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if tuple(got[k]) != tuple(expected[k]))
    if missing or extra or wrong:
        raise RuntimeError(f"export plan does not fit LlavaForConditionalGeneration: missing {missing[:3]}, "
                           f"unexpected {extra[:3]}, wrong shape {wrong[:3]}")


def shard(plan: list[PlannedTensor], max_bytes: int = MAX_SHARD_BYTES) -> list[list[PlannedTensor]]:
    """Consecutive groups of at most ``max_bytes`` (a bigger tensor alone), in the plan's order."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for item in plan:
        if shards[-1] and size + item.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def _header(items: list[PlannedTensor]) -> bytes:
    entries, offset = {}, 0
    for item in items:
        entries[item.name] = {"dtype": SAFETENSORS_DTYPES[item.dtype], "shape": list(item.shape),
                              "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    header = {"__metadata__": {"format": "pt"}, **entries}
    raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data on 8 bytes
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: Path, items: list[PlannedTensor]) -> None:
    """One safetensors file, each tensor produced, written from its own memory and dropped before the next.

    The format is a length-prefixed JSON header and the raw little-endian bytes, back to back; ``save_file``
    would first gather the whole shard's bytes in memory, a second copy of the weights.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(_header(items))
        for item in items:
            tensor = item.produce().contiguous()
            if tuple(tensor.shape) != item.shape or tensor.dtype != item.dtype:
                raise RuntimeError(f"{item.name}: produced {tuple(tensor.shape)} {tensor.dtype}, "
                                   f"planned {item.shape} {item.dtype}")
            data = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b""
            fh.write(memoryview(data))
            del tensor, data
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_weights(out_dir: Path, plan: list[PlannedTensor], max_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """``model.safetensors``, or numbered shards plus ``model.safetensors.index.json``; returns the file names."""
    groups = shard(plan, max_bytes)
    if len(groups) == 1:
        write_safetensors(Path(out_dir) / WEIGHTS_NAME, groups[0])
        return [WEIGHTS_NAME]
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for name, group in zip(names, groups):
        write_safetensors(Path(out_dir) / name, group)
        weight_map.update({item.name: name for item in group})
    index = {"metadata": {"total_size": sum(item.nbytes for item in plan)}, "weight_map": dict(sorted(weight_map.items()))}
    (Path(out_dir) / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names + [INDEX_NAME]
