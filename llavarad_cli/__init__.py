"""llavarad: train, run and evaluate LLaVA-Rad-style chest X-ray findings models."""

__version__ = "0.1.0"
