"""Real receivers for alert notifications on loopback: an HTTP server for Apprise's
`json://` scheme and an SMTP server (aiosmtpd) for `mailto://`; and a hand-driven
agent that sends chosen values at chosen times."""

from __future__ import annotations

import email
import json
import threading
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from processes import HOST, free_port
from websockets.sync.client import connect


class JSONReceiver:
    """Apprise's json:// target: records each POSTed message; can go down and come back
    on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"json://{HOST}:{self.port}/hook"

    def start(self) -> JSONReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.messages.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.messages)

    def titles(self) -> list[str]:
        return [m["title"] for m in self.received()]


class SMTPReceiver:
    """A plain (non-TLS) SMTP server for Apprise's mailto:// scheme."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[email.message.EmailMessage] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                mail = email.message_from_bytes(envelope.content, policy=policy.default)
                with receiver._lock:
                    receiver.mails.append(mail)
                return "250 OK"

        self._controller = Controller(Handler(), hostname=HOST, port=self.port)

    @property
    def url(self) -> str:
        # mailto:// (not mailtos://) is plain SMTP; `to` and `from` name the addresses.
        return f"mailto://{HOST}:{self.port}?from=alerts@example.com&to=ops@example.com"

    def start(self) -> SMTPReceiver:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def received(self) -> list[tuple[str, str]]:
        """(subject, plain-text body) of each mail."""
        with self._lock:
            mails = list(self.mails)
        return [(m["Subject"], m.get_body(("plain",)).get_content()) for m in mails]


class HandAgent:
    """One agent connection that sends exactly the readings a test chooses."""

    def __init__(self, stream_url: str, agent: str, token: str, epoch: str = "hand"):
        self.ws = connect(stream_url, additional_headers={"Authorization": f"Bearer {token}"},
                          open_timeout=10, close_timeout=5).__enter__()
        self.ws.send(json.dumps({"type": "hello", "agent": agent, "epoch": epoch,
                                 "version": "test"}))
        welcome = json.loads(self.ws.recv(timeout=10))
        assert welcome["type"] == "welcome", welcome
        self.seq = welcome["acked"]

    def send(self, *values_at: tuple[float, float], sensor: str = "freezer",
             metric: str = "temperature") -> None:
        """Send (ts, value) readings in one batch and wait for their ack."""
        readings = []
        for ts, value in values_at:
            self.seq += 1
            readings.append({"seq": self.seq, "sensor": sensor, "metric": metric,
                             "value": value, "unit": "C", "ts": ts})
        self.ws.send(json.dumps({"type": "readings", "readings": readings}))
        for _ in range(100):  # bounded: acks only, the last one ours
            message = json.loads(self.ws.recv(timeout=10))
            if message.get("type") == "ack" and message["seq"] >= self.seq:
                return
        raise AssertionError("no ack for the readings")

    def close(self) -> None:
        self.ws.close()
