"""Sends alert notifications through Apprise, off the event loop.

One worker thread per distinct Apprise URL, each with its own bounded queue:
a receiver that is down or slow holds up only its own messages, never
another receiver's and never ingest (the event loop only appends to a deque).
A failed send is retried with exponential backoff for as long as the
receiver stays down; past the queue's bound the oldest waiting message is
dropped. Sent, failed (attempts) and dropped are counted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("sensor_edge.collector.alerts")

# Messages waiting per receiver; past this the oldest is dropped (and counted).
QUEUE_PER_RECEIVER = 100
# Retry delays while a receiver is down: 1 s, doubling up to a minute.
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0


@dataclass
class Delivery:
    """One notification to every URL of its rule; ``done`` runs (on a worker thread)
    once each URL has it, or dropped it."""

    title: str
    body: str
    firing: bool
    urls: tuple[str, ...]
    done: Callable[[], None] | None = None
    _left: int = field(default=-1, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._left = len(self.urls)

    def finished_one(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last and self.done is not None:
            self.done()


@dataclass
class NotificationCounters:
    """Where the notifier counts (prometheus_client counters, or anything with inc())."""

    sent: object
    failed: object
    dropped: object


class Notifier:
    def __init__(self, counters: NotificationCounters, queue_size: int = QUEUE_PER_RECEIVER,
                 backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX)):
        self._counters = counters
        self._queue_size = queue_size
        self._backoff = backoff
        self._receivers: dict[str, _Receiver] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def send(self, delivery: Delivery) -> None:
        """Queue a notification for each of its URLs; never blocks."""
        if not delivery.urls:
            if delivery.done is not None:
                delivery.done()
            return
        for url in delivery.urls:
            self._receiver(url).put(delivery)

    def _receiver(self, url: str) -> _Receiver:
        with self._lock:
            receiver = self._receivers.get(url)
            if receiver is None:
                receiver = self._receivers[url] = _Receiver(
                    url, self._counters, self._queue_size, self._backoff, self._stopping)
                receiver.start()
            return receiver

    def waiting(self) -> int:
        """Messages queued or being sent, over every receiver."""
        with self._lock:
            receivers = list(self._receivers.values())
        return sum(r.waiting() for r in receivers)

    def stop(self, timeout: float) -> int:
        """Stop every worker (a send in progress may finish within ``timeout``); how many
        messages were left unsent. Their transitions stay unnotified in storage, so the
        next start sends them."""
        self._stopping.set()
        with self._lock:
            receivers = list(self._receivers.values())
        for receiver in receivers:
            receiver.wake()
        per_receiver = timeout / max(1, len(receivers))
        for receiver in receivers:
            receiver.join(per_receiver)
        return sum(r.waiting() for r in receivers)


class _Receiver(threading.Thread):
    def __init__(self, url: str, counters: NotificationCounters, queue_size: int,
                 backoff: tuple[float, float], stopping: threading.Event):
        import apprise  # here: a collector without alerts does not need it

        # Its INFO line on every attempt is noise; its warnings say why a send failed.
        logging.getLogger("apprise").setLevel(max(logging.WARNING,
                                                  logging.getLogger("apprise").level))

        self._types = {True: apprise.NotifyType.FAILURE, False: apprise.NotifyType.SUCCESS}
        loaded = apprise.Apprise()
        loaded.add(url)  # the loader checked it with Apprise already
        self._apprise = loaded
        # For logs: Apprise's own privacy form hides tokens and passwords.
        self.shown = next((s.url(privacy=True).split("?", 1)[0] for s in loaded),
                          url.split(":", 1)[0] + "://...")
        super().__init__(name=f"alerts {self.shown[:40]}", daemon=True)
        self._counters = counters
        self._queue: deque[Delivery] = deque()  # waiting; the one being sent is apart
        self._current: Delivery | None = None
        self._queue_size = queue_size
        self._backoff = backoff
        self._stopping = stopping
        self._wakeup = threading.Condition()

    def put(self, delivery: Delivery) -> None:
        dropped = None
        with self._wakeup:
            if len(self._queue) >= self._queue_size:
                dropped = self._queue.popleft()
            self._queue.append(delivery)
            self._wakeup.notify()
        if dropped is not None:
            self._counters.dropped.inc()
            log.warning("alert queue for %s is full; dropped the oldest notification (%s)",
                        self.shown, dropped.title)
            dropped.finished_one()

    def waiting(self) -> int:
        with self._wakeup:
            return len(self._queue) + (self._current is not None)

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def run(self) -> None:
        delay = 0.0
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping.is_set():
                    self._wakeup.wait()
                if self._stopping.is_set():
                    return
                delivery = self._current = self._queue.popleft()
            # The same message until it goes through: the receiver is down, not the message.
            while not self._notify(delivery):
                self._counters.failed.inc()
                if delay == 0:
                    log.warning("cannot send alert notifications to %s; retrying with "
                                "backoff", self.shown)
                delay = min(delay * 2, self._backoff[1]) if delay else self._backoff[0]
                if self._stopping.wait(delay):
                    return
            self._counters.sent.inc()
            if delay:
                log.info("alert notifications to %s go through again", self.shown)
                delay = 0.0
            with self._wakeup:
                self._current = None
            delivery.finished_one()

    def _notify(self, delivery: Delivery) -> bool:
        try:
            return bool(self._apprise.notify(
                body=delivery.body, title=delivery.title,
                notify_type=self._types[delivery.firing]))
        except Exception as e:  # a plugin's bug must not end this receiver's thread
            log.warning("Apprise raised sending to %s: %s", self.shown, e)
            return False
