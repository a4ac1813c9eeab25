"""Which files share a lint message (pure logic)."""

from __future__ import annotations

from sqlcheck.batching import file_count, plan_messages


def test_small_files_share_messages_up_to_the_file_count():
    files = [(f"t{i}", 10) for i in range(10)]
    assert plan_messages(files, max_files=4, max_bytes=1000) == [
        ["t0", "t1", "t2", "t3"], ["t4", "t5", "t6", "t7"], ["t8", "t9"]]


def test_a_batch_stops_before_its_bytes_would_pass_the_limit():
    files = [("a", 60), ("b", 40), ("c", 30), ("d", 10)]
    assert plan_messages(files, max_files=8, max_bytes=100) == [["a", "b"], ["c", "d"]]


def test_a_file_above_the_byte_limit_goes_alone_and_order_is_kept():
    files = [("big1", 5000), ("big2", 900), ("s1", 10), ("s2", 10), ("s3", 10)]
    messages = plan_messages(files, max_files=8, max_bytes=800)
    assert messages == [["big1"], ["big2"], ["s1", "s2", "s3"]]
    assert file_count(messages) == 5
    assert [t for m in messages for t in m] == [t for t, _ in files]


def test_one_file_per_message_when_batching_is_off():
    files = [(f"t{i}", 1) for i in range(3)]
    assert plan_messages(files, max_files=1, max_bytes=10**6) == [["t0"], ["t1"], ["t2"]]
    assert plan_messages([], max_files=8, max_bytes=10) == []
