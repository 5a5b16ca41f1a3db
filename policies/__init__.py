"""Policies: networks, training in the dream or the simulator, evaluation in the simulator.

The interface every policy family meets is ``policies.base.Policy``: ``obs_keys`` and
``act(obs: dict of (B, ...) tensors) -> (B, 6) tensor`` (optionally ``reset(mask)`` and
``bind(env)``); families register a loader with ``base.register_policy_loader`` and are then
loaded by ``base.load_policy(spec)`` (``expert``, ``random``, a train-policy run directory, or a
directory whose ``policy.json`` names its family; an SB3 ``.zip`` only with ``allow_pickle=True``).
See ``policies/base.py``; the SB3 format is ``policies/sb3_format.py``.

Functions (the commands call them):
  - ``train.train_policy(cfg) -> Path`` -- ``dreamgym train-policy env=dream|real ...``
  - ``evaluate.evaluate_policy(policy, task, episodes, seed) -> dict`` and ``evaluate_policies``
    (several policies, same held-out rooms, one batch) -- ``dreamgym eval-policy``
  - ``diamond.diamond(cfg) -> dict`` -- ``dreamgym diamond`` (real collection -> world-model
    update -> policy in imagination, within a budget of real steps)
  - ``bench_transfer.bench(cfg)`` / ``bench_dream.bench(...)`` -- ``dreamgym bench transfer|dream``
"""
