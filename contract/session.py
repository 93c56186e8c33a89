"""One session object per end of an agent's link, with no I/O.

Like websockets' ClientProtocol and ServerProtocol: each is fed the frames its
end receives and says what they mean and what may be sent next; the asyncio
code around it (agent/uplink.py, server/ingest/connection.py) only moves
frames, reads clocks and touches the buffer or the database.

- :class:`AgentSession`, the agent's end: hello, welcome, the window of
  unacknowledged batches, acks, bye.
- :class:`CollectorSession`, the collector's end: which messages may come
  when, and from whom.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sensor_edge.contract.status import AgentStatus
from sensor_edge.contract.protocol import (
    MAX_BATCH_LIMIT,
    MAX_FRAME_LIMIT,
    Ack,
    AgentMessage,
    Bye,
    CloseCode,
    Error,
    Hello,
    ProtocolError,
    Reading,
    Readings,
    Status,
    Welcome,
    encode,
    parse_agent_message,
    parse_collector_message,
)


def _policy(code: str, detail: str) -> ProtocolError:
    return ProtocolError(code, detail, CloseCode.POLICY_VIOLATION)


# --- the agent's end --------------------------------------------------------


@dataclass(frozen=True)
class Welcomed:
    """The collector holds every seq up to ``acked``: square the buffer with it first."""

    acked: int
    time: float


@dataclass(frozen=True)
class Acked:
    """Every seq up to ``seq`` is durably stored: the buffer may forget it."""

    seq: int


@dataclass(frozen=True)
class Refused:
    """The collector refused what we sent (it closes the connection next)."""

    error: str
    detail: str


AgentEvent = Welcomed | Acked | Refused


class AgentSession:
    """The agent's end of one connection.

    :meth:`hello` first; then :meth:`receive` each frame from the collector:
    a :class:`Welcomed` opens the window, after which :meth:`readings` may
    send batches while :attr:`window_open`, each :class:`Acked` closing its
    part of the window. :meth:`bye` ends the session. Anything the collector
    says out of turn raises :class:`ProtocolError`.
    """

    def __init__(self, agent: str, epoch: str, version: str, *, window: int):
        self.agent = agent
        self.epoch = epoch
        self.version = version
        self.window = window
        self.welcomed = False
        self.closing = False
        self.acked = 0  # the highest seq the collector holds, as far as we know
        self.sent_upto = 0  # the last seq sent on this connection
        self._in_flight: deque[int] = deque()  # the last seq of each unacked batch

    def hello(self, time: float | None = None) -> str:
        """The first frame."""
        return encode(Hello(self.agent, self.epoch, self.version, time=time))

    def receive(self, frame: str | bytes) -> AgentEvent:
        message = parse_collector_message(frame)
        if isinstance(message, Error):
            if not self.welcomed:  # refused before anything was sent: the link is unusable
                raise _policy(message.error, message.detail)
            return Refused(message.error, message.detail)
        if not self.welcomed:
            if not isinstance(message, Welcome):
                raise _policy("unexpected", f"expected welcome, got {type(message).__name__}")
            self.welcomed = True
            self.acked = self.sent_upto = message.acked
            return Welcomed(message.acked, message.time)
        if isinstance(message, Welcome):
            raise _policy("unexpected", "a second welcome")
        assert isinstance(message, Ack)
        if message.seq > self.sent_upto:
            # Taken at its word it would make the buffer forget readings never sent.
            raise _policy("bad_ack", f"ack {message.seq} is past the last seq sent, "
                          f"{self.sent_upto}")
        self.acked = max(self.acked, message.seq)
        while self._in_flight and self._in_flight[0] <= message.seq:
            self._in_flight.popleft()
        return Acked(message.seq)

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet acknowledged."""
        return len(self._in_flight)

    @property
    def window_open(self) -> bool:
        """Whether another batch may be sent now."""
        return self.welcomed and not self.closing and len(self._in_flight) < self.window

    def readings(self, rows: list[Reading]) -> str:
        """The frame for the next batch: ``rows`` follow :attr:`sent_upto`, in order."""
        if not self.window_open:
            raise RuntimeError("the window is closed")  # a bug in the driver, not bad input
        if not rows or rows[0].seq <= self.sent_upto:
            raise RuntimeError(f"batch must start past seq {self.sent_upto}")
        self.sent_upto = rows[-1].seq
        self._in_flight.append(self.sent_upto)
        return encode(Readings(rows))

    def status(self, status: AgentStatus) -> str:
        """A `status` frame (the agent's health); never after bye."""
        if self.closing:
            raise RuntimeError("status after bye")
        return encode(Status(status.to_fields()))

    def bye(self) -> str:
        """The last frame: nothing may follow it."""
        self.closing = True
        return encode(Bye())


# --- the collector's end ----------------------------------------------------


class CollectorSession:
    """The collector's view of one agent connection: which messages may come when.

    Feed it frames with :meth:`receive`; it returns the validated message or
    raises :class:`ProtocolError`. It holds no socket and no clock.
    """

    def __init__(self, agent_id: str, *, max_frame_bytes: int = MAX_FRAME_LIMIT - 1,
                 max_batch_readings: int = MAX_BATCH_LIMIT - 1):
        self.agent_id = agent_id
        self.max_frame_bytes = max_frame_bytes
        self.max_batch_readings = max_batch_readings
        self.hello: Hello | None = None
        self.closed = False

    @property
    def epoch(self) -> str | None:
        return self.hello.epoch if self.hello else None

    def receive(self, frame: str | bytes) -> AgentMessage:
        if self.closed:
            raise _policy("closed", "the agent said bye")
        message = parse_agent_message(frame, max_frame_bytes=self.max_frame_bytes,
                                      max_batch_readings=self.max_batch_readings)
        if isinstance(message, Hello):
            if self.hello is not None:
                raise _policy("duplicate_hello", "hello was already received")
            if message.agent != self.agent_id:
                raise _policy("wrong_agent", f"this token belongs to agent {self.agent_id!r}, "
                              f"not {message.agent!r}")
            self.hello = message
        elif self.hello is None:
            raise _policy("hello_required", "the first message must be hello")
        elif isinstance(message, Bye):
            self.closed = True
        return message
