"""Published names and shapes of the released LLaVA-Rad parts (the model card's BiomedCLIP-CXR 518 tower and Vicuna-7B v1.5).

One place for them: dry-run memory estimates use them before anything is downloaded, and the GPU benchmarks
build the full-size architecture from them with random weights.
"""

from __future__ import annotations

#: The released LLaVA-Rad weights on the hub (the default of `infer --model` and of the tower's source).
RELEASED_MODEL = "microsoft/llava-rad"
#: The base LM the released weights were trained on (the default base LM everywhere).
RELEASED_BASE = "lmsys/vicuna-7b-v1.5"

#: The vision side of the released biomedclipcxr_518.json; the BiomedBERT text tower is never built.
RELEASED_VISION_CONFIG = {
    "embed_dim": 512,
    "vision_cfg": {"timm_model_name": "vit_base_patch14_dinov2.lvd142m", "timm_model_pretrained": False,
                   "timm_pool": "", "timm_proj": "linear", "image_size": 518},
}
#: ViT-B/14 at 518 px: 37 x 37 patch tokens of width 768 (about 86 M parameters).
RELEASED_TOWER = {"params": 86_000_000, "hidden": 768, "patches": 1369}

#: lmsys/vicuna-7b-v1.5: the Llama-2-7B architecture, as LlamaConfig keyword arguments.
VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)

#: Base LMs whose shape is known without their config.json.
KNOWN_LM_SHAPES = {RELEASED_BASE: VICUNA_7B}
