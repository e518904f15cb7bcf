"""A learner rank that raises ends the run with one line and the resume command; local collectives stay on
loopback for gloo and NCCL alike."""

from __future__ import annotations

import pytest

from cluster.config import load_config
from learner.actor import collective_interfaces
from learner.group import LearnerDied


def test_local_collectives_use_loopback_for_gloo_and_nccl():
    # NCCL skips `lo` unless it is named: unset, its bootstrap sockets would bind an external interface.
    assert collective_interfaces("file:///tmp/motif-rendezvous", None) == {
        "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "=lo"}
    assert collective_interfaces("127.0.0.1:29500", "127.0.0.1") == {
        "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "=lo"}


def test_a_rank_that_raises_ends_with_one_line_and_the_resume_command(ray_session, tiny_model):
    """The rank's own error (here an IndexError from a plan that names a sample it was not given; in a real
    run CUDA out of memory, or gloo's "Connection closed by peer" when a peer's node dies mid-update) comes
    back as a RayTaskError; the group turns it into LearnerDied, which the CLI prints as one line."""
    from cluster.workers import start_learner_group
    from learner.records import TrainSample

    config = load_config("tests/configs/smoke.yaml", ["cluster.learner_threads=1"])
    hint = "Resume with: motif train --config runs/x/config.yaml --resume auto"
    group = start_learner_group(config, tiny_model, hint)
    try:
        group.wait_ready(300)
        rank = group.ranks[0]
        with pytest.raises(LearnerDied) as failed:
            group._get(rank.train_step.remote([], [([[3]], 4)]), "the update")
        message = str(failed.value)
        assert "\n" not in message and "IndexError" in message and message.endswith(hint)
        # The rank itself is alive: a real run stops here anyway, since its state after a failed step is unknown.
        metrics = group.train_step([TrainSample([5, 6], [7, 8], 1.0)])
        assert metrics["optimizer_steps"] == 1
    finally:
        group.shutdown()
