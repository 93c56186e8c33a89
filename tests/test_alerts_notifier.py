"""The notifier against a real json:// receiver: retries, the bound, one receiver per thread."""

from __future__ import annotations

import threading

from alert_receivers import JSONReceiver
from processes import wait_until

from sensor_edge.server.outputs.alerts.notifier import Delivery, NotificationCounters, Notifier


class Count:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def inc(self, amount: int = 1) -> None:
        with self._lock:
            self.value += amount


def counters() -> NotificationCounters:
    return NotificationCounters(sent=Count(), failed=Count(), dropped=Count())


def test_a_full_queue_drops_the_oldest_waiting_and_counts_it():
    receiver = JSONReceiver()  # not started: down
    counts = counters()
    notifier = Notifier(counts, queue_size=2, backoff=(0.05, 0.2))
    done: list[str] = []
    try:
        def send(i: int) -> None:
            notifier.send(Delivery(f"m{i}", "body", True, (receiver.url,),
                                   done=lambda: done.append(f"m{i}")))

        send(0)
        wait_until(lambda: counts.failed.value >= 1, 10, what="a failed attempt")
        for i in range(1, 5):
            send(i)
        # m0 is being retried; m1 and m2 were pushed out by m3 and m4.
        assert counts.dropped.value == 2 and sorted(done) == ["m1", "m2"]
        receiver.start()
        wait_until(lambda: len(receiver.received()) == 3, 10, what="the three kept messages")
        assert receiver.titles() == ["m0", "m3", "m4"]
        wait_until(lambda: counts.sent.value == 3, 5, what="them to be counted sent")
        assert sorted(done) == ["m0", "m1", "m2", "m3", "m4"]
        assert notifier.stop(2) == 0
    finally:
        notifier.stop(2)
        receiver.stop()


def test_a_delivery_is_done_once_every_receiver_has_it():
    up, down = JSONReceiver().start(), JSONReceiver()
    notifier = Notifier(counters(), backoff=(0.05, 0.2))
    done = threading.Event()
    try:
        notifier.send(Delivery("both", "body", False, (up.url, down.url), done=done.set))
        wait_until(lambda: up.received(), 10, what="the receiver that is up")
        assert not done.is_set()
        down.start()
        wait_until(done.is_set, 10, what="the delivery to be done")
        assert [m["title"] for m in down.received()] == ["both"]
    finally:
        notifier.stop(2)
        up.stop()
        down.stop()
