"""Training: ``llavarad pretrain`` (stage 1) and ``llavarad finetune`` (stage 2) on DeepSpeed workers.

- ``run``: plan a run from a spec (topology, DeepSpeed config, launcher command), show it, launch it;
- ``launcher``: the DeepSpeed config, the launcher command, workers' failures as one line;
- ``worker``: one rank's recipe, set up / train / clean up (``python -m llavarad_cli.train.worker --spec
  resolved_spec.yaml``, beside the ``deepspeed_config.json`` the parent wrote);
- ``rank_reports``: what a failed or stopped rank leaves in ``.errors/`` for the parent to report;
- ``debug_hooks``: the opt-in test kill switch and the CPU switch that skips DeepSpeed's shared-memory op;
- ``build``: the model for a stage (frozen LM and tower, projector, LoRA on the LM alone);
- ``samples`` / ``dataset``: ids and label masks for ``plain`` and ``v1``, lazy records, resumable data order;
- ``checkpoint`` / ``outputs`` / ``metrics`` / ``memory``: resumable checkpoints, final weights, logs, estimates.
"""
