"""Batched, resumable findings generation; chunk planning for several GPUs; merging chunk outputs.

Library API: ``read_queries``, ``Predictor``, ``run_batch``, ``merge_chunks``.
"""
