"""The training loop, in parts: one step (step.py: rollout -> score -> credit -> train -> push), a run around its
steps (train.py: evaluation, checkpoints, the stall policy), the run's actors (run.py), held-out evaluation during
training (held_out.py) and the schedules that order steps (sync.py: one after another; overlap.py: the next
rollouts while a step trains). A schedule decides when rollouts and pushes happen; a step knows none of that."""
