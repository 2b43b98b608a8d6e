"""The shared FL task: what both roles (client and server) and both drivers agree on.

- :mod:`~fedshield.task.determinism`: seeds derived from (run, job, round, user), torch set-up;
- :mod:`~fedshield.task.training`: the one local-training loop and batched prediction;
- :mod:`~fedshield.task.jobs`: :class:`JobSpec`, one determinized FL job;
- :mod:`~fedshield.task.messages`: what travels between server and client in a round;
- :mod:`~fedshield.task.defense`: the hook a client-side defense implements.

Nothing here imports another fedshield package except :mod:`fedshield.models` helpers.
"""
