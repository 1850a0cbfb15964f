"""The fault-injection suite at CI size: every fault class of ``python -m benchmarks.faults``
(SIGKILL of encode and training, byte flips per file type, bad inputs, concurrent commands) must
lose nothing. The README's reliability table comes from the same harness at full size."""

import pytest

from benchmarks import faults

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _no_loss(outcomes):
    for o in outcomes:
        assert o.tried > 0 and o.lost == [], f"{o.fault}: {o.lost}"


def test_sigkill_of_encode_then_rerun_is_byte_identical(tmp_path):
    _no_loss([faults.kill_encode(tmp_path, kills=2)])


def test_sigkill_of_training_then_resume_is_tensor_identical(tmp_path):
    _no_loss([faults.kill_training(tmp_path, kills=2)])


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    # `kill PID` and a terminal's Ctrl-C, the signal and how it is sent both differing; the
    # benchmark adds the two other pairs
    outcome = faults.terminate(tmp_path, cases=2)
    assert outcome.tried == 2
    _no_loss([outcome])


def test_every_flipped_byte_is_detected_or_refused(tmp_path):
    outcomes = faults.corruption(tmp_path, flips=2)
    assert sorted(o.fault for o in outcomes) == sorted(
        f"flipped byte: {k}"
        for k in (
            "shard",
            "text.h5",
            "manifest.json",
            "view store",
            "checkpoint.pt",
            "best.pt",
            "summary.json",
            "metrics.jsonl",
        )
    )
    _no_loss(outcomes)


def test_bad_inputs_are_one_line_refusals(tmp_path):
    outcome = faults.bad_inputs(tmp_path)
    assert outcome.tried >= 20
    _no_loss([outcome])


def test_the_second_of_two_concurrent_commands_refuses(tmp_path):
    _no_loss([faults.concurrency(tmp_path)])


def test_the_harness_counts_a_loss(tmp_path):
    """The harness itself can fail: a case that breaks its promise is counted as lost."""
    o = faults.Outcome("x")
    o.check("kept", True)
    o.check("broken", False, "why")
    assert (o.tried, o.survived, o.lost) == (2, 1, ["broken: why"])
    assert faults.one_line(1, "progress\nError: one line") and not faults.one_line(1, "Traceback\nError: x")
    assert not faults.one_line(0, "Error: x") and not faults.one_line(1, "Error: a\nError: b")
