"""The run files on their own: checkpoints behind a sha256 header, sealed metric rows and
summaries, the CSV beside them, and what an epoch's save writes."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from dait_cache.errors import DaitError
from dait_cache.train import checkpoint as ckpt


def test_a_checkpoint_round_trips_and_any_flipped_payload_byte_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    state = {"step": {"w": torch.arange(6.0)}, "epoch": 3}
    ckpt.save_atomic(state, path)
    data = path.read_bytes()
    head = len(ckpt.MAGIC) + 65
    assert data[: len(ckpt.MAGIC)] == ckpt.MAGIC
    assert data[len(ckpt.MAGIC) : head - 1] == hashlib.sha256(data[head:]).hexdigest().encode()
    loaded = ckpt.load(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["step"]["w"], torch.arange(6.0))
    for at in (head, head + (len(data) - head) // 2, len(data) - 1):  # torch's zip would load some of these
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(DaitError, match=r"c.pt is not a readable dait-cache checkpoint \(its content does not"):
            ckpt.load(path)


def test_a_checkpoint_written_before_the_header_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"step": {"w": torch.ones(2)}, "epoch": 0}, path)
    assert torch.equal(ckpt.load(path)["step"]["w"], torch.ones(2))


@pytest.mark.parametrize("obj", [{"epoch": 1}, [1, 2], torch.zeros(1)])
def test_a_file_without_training_state_is_refused(tmp_path, obj):
    path = tmp_path / "x.pt"
    ckpt.save_atomic(obj, path)
    with pytest.raises(DaitError, match=r"x.pt is not a dait-cache checkpoint \(no 'step' state\)"):
        ckpt.load(path)


def test_a_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(DaitError, match=r"none.pt not found; the run has no such checkpoint"):
        ckpt.load(tmp_path / "none.pt")


def test_weights_of_another_network_are_refused_whatever_differs(tmp_path):
    """A state dict with a key too many (another method's extra head), one too few, or a tensor of
    another shape: one line naming the file and what to do, never a partial load."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    good = {k: v.clone() for k, v in net.state_dict().items()}
    ckpt.load_into(net, good, tmp_path / "best.pt", "resnet18")  # its own weights load
    for state in (
        {**good, "adapter.weight": torch.zeros(1)},
        {"0.weight": good["0.weight"]},
        {**good, "0.bias": torch.zeros(4)},
    ):
        with pytest.raises(
            DaitError, match=r"best.pt does not fit resnet18 \((Error|Unexpected|Missing).*another --arch"
        ):
            ckpt.load_into(net, state, tmp_path / "best.pt", "resnet18")


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"step": RunsCode()}, path)
    with pytest.raises(DaitError, match=r"checkpoint.pt is not a readable dait-cache checkpoint \(UnpicklingError"):
        ckpt.load(path)
    assert not marker.exists()


def test_metric_rows_are_sealed_and_an_edited_number_is_refused(tmp_path):
    rows = [{"epoch": 0, "ce": 2.5, "val_top1": 10.0}, {"epoch": 1, "ce": 2.0, "val_top1": 12.5}]
    ckpt.write_metrics(tmp_path, rows)
    assert ckpt.read_metrics(tmp_path) == rows
    sealed = (tmp_path / ckpt.METRICS).read_bytes()
    ckpt.write_metrics(tmp_path, [json.loads(line) for line in sealed.splitlines()])  # rows read with their digests
    assert (tmp_path / ckpt.METRICS).read_bytes() == sealed  # sealed once, not over an old digest
    lines = (tmp_path / ckpt.METRICS).read_text().splitlines()
    assert json.loads(lines[1])["digest"]
    (tmp_path / ckpt.METRICS).write_text(lines[0] + "\n\n" + lines[1] + "\n")  # a blank line is no row
    assert ckpt.read_metrics(tmp_path) == rows
    (tmp_path / ckpt.METRICS).write_text(
        lines[0] + "\n" + lines[1].replace('"val_top1": 12.5', '"val_top1": 92.5') + "\n"
    )
    with pytest.raises(DaitError, match=r"metrics.jsonl line 2 is damaged \(its content does not match its digest\)"):
        ckpt.read_metrics(tmp_path)
    (tmp_path / ckpt.METRICS).write_text(lines[0] + "\n[1, 2]\n")
    with pytest.raises(DaitError, match=r"metrics.jsonl line 2 is damaged \(not a JSON object\)"):
        ckpt.read_metrics(tmp_path)
    (tmp_path / ckpt.METRICS).write_text(lines[0] + "\n{nope\n")
    with pytest.raises(DaitError, match=r"line 2 is damaged \(not JSON\); continue the run with --resume"):
        ckpt.read_metrics(tmp_path)
    assert ckpt.read_metrics(tmp_path / "elsewhere") == []


def test_the_csv_has_every_rows_columns_in_first_seen_order_and_blanks_for_missing_values(tmp_path):
    rows = [{"epoch": 0, "ce": 1.5, "test_top1": None}, {"epoch": 1, "kd": 0.25, "ce": 1.0}]
    assert ckpt.metrics_csv(rows) == "epoch,ce,test_top1,kd\n0,1.5,,\n1,1.0,,0.25\n"
    ckpt.write_metrics(tmp_path, rows)
    assert not (tmp_path / ckpt.METRICS_CSV).exists()
    ckpt.write_metrics(tmp_path, rows, csv_too=True)
    assert (tmp_path / ckpt.METRICS_CSV).read_text() == ckpt.metrics_csv(rows)


def test_loss_terms_are_the_numbers_that_are_not_row_fields():
    row = {"epoch": 2, "ce": 1.0, "kd": 2, "note": "x", "lr": 0.1, "eval_seconds": 3.0, "images_per_s": 9.0}
    assert ckpt.loss_terms(row) == ["ce", "kd"]


def test_a_damaged_summary_reads_as_damaged_not_as_numbers(tmp_path):
    ckpt.write_summary(tmp_path, {"status": "finished", "test_top1_last": 50.0})
    assert ckpt.read_summary(tmp_path) == {"status": "finished", "test_top1_last": 50.0}
    path = tmp_path / ckpt.SUMMARY
    path.write_text(path.read_text().replace("50.0", "95.0"))
    damaged = ckpt.read_summary(tmp_path)
    assert damaged["status"] == "damaged" and "does not match its digest" in damaged["error"]
    path.write_text("{")
    assert ckpt.read_summary(tmp_path) == {"status": "damaged", "error": f"{path} is not JSON"}
    assert ckpt.read_summary(tmp_path / "elsewhere") is None


def test_summary_numbers_take_the_last_row_and_the_best_on_validation():
    metrics = [
        {"epoch": 0, "val_top1": 20.0, "test_top1": 18.0},
        {"epoch": 1, "val_top1": 30.0, "test_top1": 25.0},
        {"epoch": 2, "val_top1": 28.0, "test_top1": 27.0},
    ]
    best = {"epoch": 1, "val_top1": 30.0, "test_top1": 25.0}
    assert ckpt.summary_numbers(metrics, best) == {
        "epochs_done": 3,
        "test_top1_last": 27.0,
        "val_top1_last": 28.0,
        "test_top1_best_val": 25.0,
        "val_top1_best": 30.0,
        "best_epoch": 1,
    }


class _Stateful:
    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"v": torch.tensor([self.value])}


def test_an_epochs_save_writes_best_and_checkpoint_only_when_asked(tmp_path):
    step, opt, sched = _Stateful(1.0), _Stateful(2.0), _Stateful(3.0)
    metrics = [{"epoch": 0, "val_top1": 10.0, "test_top1": 9.0}]
    best = {"epoch": 0, "val_top1": 10.0, "test_top1": 9.0}
    summary = {"status": "running"}
    ckpt.save_epoch(tmp_path, step, opt, sched, 0, best, False, 0, metrics, summary, checkpoint=False, csv_log=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.METRICS, ckpt.SUMMARY]
    assert ckpt.read_summary(tmp_path) == {"status": "running", **ckpt.summary_numbers(metrics, best)}
    ckpt.save_epoch(tmp_path, step, opt, sched, 0, best, True, 2, metrics, summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ckpt.METRICS, ckpt.METRICS_CSV, ckpt.SUMMARY, ckpt.BEST, ckpt.CHECKPOINT]
    )
    saved_best = ckpt.load(tmp_path / ckpt.BEST)
    assert saved_best["epoch"] == 0 and saved_best["val_top1"] == 10.0 and saved_best["step"]["v"].item() == 1.0
    saved = ckpt.load(tmp_path / ckpt.CHECKPOINT)
    assert (saved["epoch"], saved["resumed"], saved["best"], saved["metrics"]) == (0, 2, best, metrics)
    assert (saved["optimizer"]["v"].item(), saved["scheduler"]["v"].item()) == (2.0, 3.0)
    assert "part" not in saved


def test_a_part_checkpoint_counts_the_epoch_it_is_in_as_not_done(tmp_path):
    step, opt, sched = _Stateful(1.0), _Stateful(2.0), _Stateful(3.0)
    ckpt.save_part(tmp_path, step, opt, sched, 4, {"epoch": 2}, 1, [{"epoch": 3}], {"batches": 7})
    saved = ckpt.load(tmp_path / ckpt.CHECKPOINT)
    assert (saved["epoch"], saved["part"], saved["resumed"], saved["best"]) == (3, {"batches": 7}, 1, {"epoch": 2})
