"""The LLaVA-Rad model: vision tower, projector, the spliced causal LM, and checkpoint formats.

Importing this package is light; torch and friends are loaded by the submodules that need them.
"""
