"""The tracker's operation queue: bounded memory, spill to disk, order kept through failures and restarts."""

from __future__ import annotations

import json

from orchestrator.tracking.buffer import OpQueue


def metric(i: int) -> tuple:
    return ("m", "loss", float(i), i, 1_000 + i)


def drain(queue: OpQueue, batch_size: int = 4) -> list[tuple]:
    """What a consumer that never fails would send, in order."""
    sent = []
    while (batch := queue.peek(batch_size)) is not None:
        sent.extend(batch.ops)
        queue.ack(batch, len(batch.ops))
    return sent


def test_operations_beyond_the_memory_cap_go_to_the_spill_file_and_come_back_in_order(tmp_path):
    queue = OpQueue(tmp_path / "run.jsonl", max_in_memory=5)
    for i in range(12):
        queue.put([metric(i)])
    assert queue.spilled > 0 and queue.pending == 12
    assert (tmp_path / "run.jsonl").exists()
    assert drain(queue) == [metric(i) for i in range(12)]
    assert queue.pending == 0
    assert not (tmp_path / "run.jsonl").exists()  # a fully sent spill file is removed


def test_a_failed_send_leaves_the_batch_at_the_front(tmp_path):
    queue = OpQueue(tmp_path / "run.jsonl", max_in_memory=100)
    queue.put([metric(i) for i in range(6)])
    first = queue.peek(4)
    again = queue.peek(4)  # the first send failed: nothing was acked
    assert again.ops == first.ops == [metric(i) for i in range(4)]
    queue.ack(again, 2)  # the store took a prefix
    assert drain(queue) == [metric(i) for i in range(2, 6)]


def test_a_memory_batch_moved_to_disk_while_in_flight_is_acked_from_the_file(tmp_path):
    queue = OpQueue(tmp_path / "run.jsonl", max_in_memory=5)
    queue.put([metric(i) for i in range(3)])
    in_flight = queue.peek(10)
    assert in_flight.source == "memory"
    queue.put([metric(i) for i in range(3, 9)])  # overflow: memory, in-flight ops included, moves to disk
    assert queue.spilled == 9
    queue.ack(in_flight, 3)  # the in-flight send succeeded
    assert queue.pending == 6
    assert drain(queue) == [metric(i) for i in range(3, 9)]


def test_dump_leaves_exactly_the_unsent_operations_and_ignores_late_acks(tmp_path):
    queue = OpQueue(tmp_path / "run.jsonl", max_in_memory=4)
    queue.put([metric(i) for i in range(7)])  # 7 > 4: all on disk
    queue.put([metric(7)])  # memory
    sent = queue.peek(3)
    queue.ack(sent, 3)
    late = queue.peek(2)
    path, unsent = queue.dump()
    assert unsent == [metric(i) for i in range(3, 8)]
    lines = [tuple(json.loads(line)) for line in path.read_text().splitlines()]
    assert lines == unsent
    assert queue.ack(late, 2) is False  # an in-flight batch finishing after the dump changes nothing
    assert [tuple(json.loads(line)) for line in path.read_text().splitlines()] == unsent


def test_a_spill_file_left_by_a_dead_process_is_sent_first_and_a_torn_line_dropped(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(metric(i)) + "\n" for i in range(3)) + '["m","loss",3.0,3')
    queue = OpQueue(path, max_in_memory=100)
    assert queue.pending == 3
    queue.put([metric(10), metric(11)])
    assert drain(queue, batch_size=2) == [metric(0), metric(1), metric(2), metric(10), metric(11)]


def test_non_finite_values_survive_the_spill_file(tmp_path):
    queue = OpQueue(tmp_path / "run.jsonl", max_in_memory=1)
    queue.put([("m", "loss", float("nan"), 0, 1), ("m", "loss", float("inf"), 1, 2)])
    sent = drain(queue)
    assert sent[0][2] != sent[0][2]  # NaN
    assert sent[1][2] == float("inf")
