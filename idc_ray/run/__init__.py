"""The run layer: Algorithm 1 (schedule), its hooks (checkpoints, snapshots, progress), restarts,
the --eval-every curve, the backend protocol and the job recipe (condense_to). No Ray here."""
