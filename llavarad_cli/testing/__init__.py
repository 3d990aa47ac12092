"""Tiny, offline, seeded models for tests, benchmarks and smoke-testing an install.

Also runnable: ``python -m llavarad_cli.testing --help``. Nothing in the product imports this package: the tiny
vision tower is described entirely by its JSON (see :mod:`llavarad_cli.testing.tiny`), so a tiny checkpoint
loads in any process, like a real one.
"""

from llavarad_cli.testing.tiny import (LORA_TARGETS, SEED, TINY_IMAGE_SIZE, TINY_LM_HIDDEN, TINY_VISION_CONFIG_NAME,
                                       TINY_VIT_ARCH, TINY_VIT_KWARGS, TINY_VIT_WIDTH, TINY_VOCAB_SIZE,
                                       TOKENIZER_CORPUS, tiny_llama_config, tiny_llavarad_model, tiny_lm,
                                       tiny_lora_model, tiny_open_clip_state, tiny_tokenizer, tiny_vision_config,
                                       tiny_vision_tower, write_tiny_checkpoint, write_tiny_lm,
                                       write_tiny_vision_tower)

__all__ = ["LORA_TARGETS", "SEED", "TINY_IMAGE_SIZE", "TINY_LM_HIDDEN", "TINY_VISION_CONFIG_NAME", "TINY_VIT_ARCH",
           "TINY_VIT_KWARGS", "TINY_VIT_WIDTH", "TINY_VOCAB_SIZE", "TOKENIZER_CORPUS", "tiny_llama_config",
           "tiny_llavarad_model", "tiny_lm", "tiny_lora_model", "tiny_open_clip_state", "tiny_tokenizer",
           "tiny_vision_config", "tiny_vision_tower", "write_tiny_checkpoint", "write_tiny_lm",
           "write_tiny_vision_tower"]
