"""HTTP on the collector's port: health, metrics, the read API and the page.

server/http_server.py sorts the port's requests: :func:`answer` answers
every plain HTTP request (the readings endpoints stream, encoded on a reader
thread), and :func:`admit` is websockets' `process_request` for the two
WebSocket paths: `/v1/stream` goes through once its bearer token names an
agent, `/v1/live` once the browser is on this collector's own page.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import http
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from sensor_edge.server.web import dashboard
from sensor_edge.server.outputs.formats import counted_in, csv_lines
from sensor_edge.server.web.http_server import StreamedResponse, request_path
from sensor_edge.server.outputs.live import LIVE_PATH
from sensor_edge.server.web.hosts import same_origin
from sensor_edge.contract.protocol import STREAM_PATH
from sensor_edge.server.storage import READING_COLUMNS, ReadingQuery, Storage, iter_newest
from sensor_edge.server.storage.retention import DAY
from sensor_edge.server.storage.rollups import (
    BUCKET_LIMIT, DEFAULT_POINTS, MAX_POINTS, MIN_POINTS, RAW, ROLLUP_COLUMNS, TIER_NAMES,
    SeriesQuery)

if TYPE_CHECKING:
    from sensor_edge.config.model import CollectorConfig
    from sensor_edge.server.ingest.agents import AgentRegistry
    from sensor_edge.server.ingest.limits import ConnectionBudget, FailedLogins
    from sensor_edge.server.outputs.alerts import Alerts
    from sensor_edge.server.outputs.metrics import CollectorMetrics
    from sensor_edge.server.web.hosts import AllowedHosts

log = logging.getLogger("sensor_edge.collector.http")

WEBSOCKET_PATHS = (STREAM_PATH, LIVE_PATH)
# Scraped by machines, often by name, and holding no readings: no Host check
# (docs/security.md). Everything else answers only to this collector's names.
ANY_HOST_PATHS = ("/healthz", "/metrics")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 1_000_000
# Browsers cannot put an Authorization header on a WebSocket handshake: with
# `api.token` set, the dashboard keeps the token in this (same-site) cookie.
API_TOKEN_COOKIE = "sensor_edge_api_token"
# Readings encoded per json.dumps call: a few milliseconds of the GIL at most.
ENCODE_ROWS = 500


class BadRequest(Exception):
    pass


@dataclass
class Web:
    """What the web face reads and counts, and nothing else of the collector."""

    config: CollectorConfig
    metrics: CollectorMetrics
    agents: AgentRegistry
    alerts: Alerts
    storage: Storage
    hosts: AllowedHosts  # the Host names it answers to (DNS rebinding)
    failed_logins: FailedLogins
    connections: ConnectionBudget  # the WebSocket budgets, agents' and browsers'
    # Runs a blocking read-and-encode on a reader thread, its chunks as they come.
    stream: Callable[[Callable[[], Iterator[bytes]]], AsyncGenerator[bytes, None]]
    # Runs a blocking storage read on a reader thread: read(function, *args).
    read: Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class AgentStream:
    """Where :func:`admit` sends a handshake on `/v1/stream`: this agent's link."""

    agent_id: str


@dataclass(frozen=True)
class LiveStream:
    """Where :func:`admit` sends a browser's handshake on `/v1/live`: the live feed."""


Route = AgentStream | LiveStream


def respond(status: int, body: bytes | str, content_type: str) -> Response:
    if isinstance(body, str):
        body = body.encode()
    headers = answer_headers(content_type)
    headers["Content-Length"] = str(len(body))
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def answer_headers(content_type: str) -> Headers:
    return Headers([("Content-Type", content_type), ("Cache-Control", "no-store"),
                    ("Connection", "close")])


def respond_json(status: int, value: Any) -> Response:
    return respond(status, json.dumps(value, separators=(",", ":")), "application/json")


def one_header(request: Request, name: str) -> str | None:
    """A header that may appear once: a second copy is a bad request, not a guess."""
    values = request.headers.get_all(name)
    if len(values) > 1:
        raise BadRequest(f"more than one {name} header")
    return values[0] if values else None


def wrong_host(web: Web, request: Request) -> Response | None:
    """A 421 unless `Host` is one of this collector's names (DNS rebinding, docs/security.md)."""
    host = one_header(request, "Host")
    if host is None:
        raise BadRequest("a Host header is required")
    if web.hosts.allows(host):
        return None
    return respond_json(421, {"error": "unknown_host", "detail": (
        f"this collector does not answer to the name {host[:100]!r}; "
        "its operator can add it to listen.allowed_hosts")})


def agent_for_token(web: Web, authorization: str | None) -> str | None:
    """The agent a `Bearer` token belongs to, compared in constant time."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    offered = authorization[len("Bearer "):].strip().encode()
    offered_hash = hashlib.sha256(offered).hexdigest().encode()
    found = None
    for credential in web.config.agents:
        # Check every credential, so the time taken says nothing about which matched.
        if credential.token is not None:
            match = hmac.compare_digest(offered, credential.token.encode())
        else:
            match = hmac.compare_digest(offered_hash, credential.token_sha256.encode())
        if match:
            found = credential.id
    return found


def api_token_ok(web: Web, request: Request) -> bool:
    """With `api.token` set: does the request carry it (header, or the dashboard's cookie)?"""
    authorization = one_header(request, "Authorization")  # two of them: 400, token or not
    expected = web.config.api_token
    if expected is None:
        return True
    offered = ""
    if authorization and authorization.startswith("Bearer "):
        offered = authorization[len("Bearer "):].strip()
    else:
        for header in request.headers.get_all("Cookie"):
            for pair in header.split(";"):
                name, _, value = pair.strip().partition("=")
                if name == API_TOKEN_COOKIE:
                    offered = unquote(value)
    return hmac.compare_digest(offered.encode(), expected.encode())


async def unauthorized(web: Web, address: str) -> Response:
    """A 401, after a delay that grows with the bad tokens this address has sent."""
    web.metrics.auth_failures.inc()
    delay = web.failed_logins.failed(address, time.monotonic())
    if delay > 0:
        # Under half the handshake timeout, so the client still gets its answer.
        await asyncio.sleep(min(delay, web.config.limits.handshake_timeout / 2))
    response = respond_json(401, {"error": "unauthorized",
                                  "detail": "a valid 'Authorization: Bearer' token is required"})
    response.headers["WWW-Authenticate"] = 'Bearer realm="sensor-collector"'
    return response


def too_many_connections(web: Web, limit: str) -> Response:
    """A 503 for a handshake past one of the connection budgets (`limits.<limit>`)."""
    web.metrics.connections_refused.labels(limit).inc()
    response = respond_json(503, {"error": "too_many_connections",
                                  "detail": f"the collector is at limits.{limit}"})
    response.headers["Retry-After"] = "5"
    return response


async def admit(web: Web, connection: ServerConnection, request: Request) -> Response | Route:
    """Judge a WebSocket handshake: a refusal, or where its connection goes.

    A connection let through holds its place in a budget until it ends.
    """
    address = connection.remote_address[0] if connection.remote_address else "?"
    try:
        if request_path(request) == STREAM_PATH:
            # Agents prove who they are with their token: any Host will do.
            agent_id = agent_for_token(web, one_header(request, "Authorization"))
            if agent_id is None:
                return await unauthorized(web, address)
            refused = web.connections.take_agent(agent_id)
            if refused is not None:
                return too_many_connections(web, refused)
            _release_when_closed(connection, lambda: web.connections.release_agent(agent_id))
            return AgentStream(agent_id)
        refused = wrong_host(web, request)
        if refused is not None:
            return refused
        if not api_token_ok(web, request):
            return await unauthorized(web, address)
        if not same_origin(one_header(request, "Origin"), one_header(request, "Host"),
                           web.hosts):
            return respond_json(403, {"error": "forbidden",
                                      "detail": "the live feed is for this collector's own page"})
        refused = web.connections.take_live()
        if refused is not None:
            return too_many_connections(web, refused)
        _release_when_closed(connection, web.connections.release_live)
        return LiveStream()
    except BadRequest as e:
        return respond_json(400, {"error": "bad_request", "detail": str(e)})


def _release_when_closed(connection: ServerConnection, release: Callable[[], None]) -> None:
    # Every connection ends here, whether or not its handler ever ran.
    connection.connection_lost_waiter.add_done_callback(lambda _: release())


async def answer(web: Web, request: Request,
                 address: str) -> Response | StreamedResponse:
    """The answer to a plain HTTP request (any path but the WebSocket ones)."""
    try:
        return await _answer(web, request, address)
    except BadRequest as e:
        return respond_json(400, {"error": "bad_request", "detail": str(e)})


async def _answer(web: Web, request: Request,
                  address: str) -> Response | StreamedResponse:
    url = urlsplit(request.path)  # readable: the front checked it (request_path)
    path = url.path
    if request.method not in ("GET", "HEAD"):
        response = respond_json(405, {"error": "method_not_allowed", "detail": "only GET"})
        response.headers["Allow"] = "GET, HEAD"
        return response
    if path not in ANY_HOST_PATHS:
        refused = wrong_host(web, request)
        if refused is not None:
            return refused
    if path == "/healthz":
        return respond_json(200, {"status": "ok"})
    if path == "/metrics":
        return respond(200, web.metrics.render(), web.metrics.content_type)
    if path.startswith("/api/") and not api_token_ok(web, request):
        return await unauthorized(web, address)
    if path == "/api/agents":
        return respond_json(200, {"agents": web.agents.as_json()})
    if path == "/api/alerts":
        return respond_json(200, {"alerts": web.alerts.as_json()})
    if path in ("/api/readings", "/api/readings.csv"):
        params = parse_qs(url.query, keep_blank_values=False)
        query = reading_query(params)
        tier = csv_tier(params) if path.endswith(".csv") else RAW
        return await readings(web, query, as_csv=path.endswith(".csv"), tier=tier)
    if path == "/api/series":
        query = series_query(parse_qs(url.query, keep_blank_values=False), web)
        try:
            series = await web.read(web.storage.series, query)
        except Exception as e:
            log.warning("cannot read series for the API: %s", e)
            return respond_json(503, {"error": "storage_unavailable",
                                      "detail": "the series cannot be read right now"})
        return respond_json(200, series)
    asset = dashboard.asset(path)
    if asset is not None:
        return respond(200, *asset)
    return respond_json(404, {"error": "not_found", "detail": f"no such endpoint: {path[:100]}"})


async def readings(web: Web, query: ReadingQuery, as_csv: bool,
                   tier: str = RAW) -> Response | StreamedResponse:
    """`/api/readings` or `.csv` (of a rollup tier's rows with ``tier``): read and
    encoded on a reader thread, sent as it comes."""
    if as_csv:
        produce = functools.partial(csv_chunks, web.storage, query,
                                    counted_in(web.metrics.escaped_names), tier)
    else:
        produce = functools.partial(json_chunks, web.storage, query)
    chunks = web.stream(produce)
    try:
        # The first chunk comes after the first query: a storage failure can still be a 503.
        first = await anext(chunks)
    except Exception as e:
        log.warning("cannot read readings for the API: %s", e)
        return respond_json(503, {"error": "storage_unavailable",
                                  "detail": "the readings cannot be read right now"})
    if as_csv:
        headers = answer_headers("text/csv; charset=utf-8")
        headers["Content-Disposition"] = 'attachment; filename="readings.csv"'
    else:
        headers = answer_headers("application/json")
    return StreamedResponse(200, headers, Prepended(first, chunks))


class Prepended:
    """``first``, then the chunks of ``rest``; closing it closes ``rest``, read or not
    (a HEAD request reads none, and the producer thread must still stop)."""

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None]):
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> Prepended:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        await self._rest.aclose()


def json_chunks(storage: Storage, query: ReadingQuery) -> Iterator[bytes]:
    """`{"readings": [...]}`, a few hundred readings a chunk (runs on a reader thread)."""
    with closing(iter_newest(storage, query)) as rows:
        opening, separator = b'{"readings":[', b""
        while page := list(islice(rows, ENCODE_ROWS)):
            text = json.dumps([dict(zip(READING_COLUMNS, row)) for row in page],
                              separators=(",", ":"))
            yield opening + separator + text[1:-1].encode()
            opening, separator = b"", b","
        yield opening + b"]}"


def csv_chunks(storage: Storage, query: ReadingQuery, neutralised: Callable[[str], None],
               tier: str = RAW) -> Iterator[bytes]:
    """The readings (or a tier's newest rollups) as CSV, in export's format, formula
    cells neutralised (on a reader thread)."""
    if tier == RAW:
        with closing(iter_newest(storage, query)) as rows:
            for text in csv_lines(rows, neutralised):
                yield text.encode()
        return
    # At most `limit` rollup rows: read whole.
    rows = [tuple(row[c] for c in ROLLUP_COLUMNS) for row in storage.rollup_rows(query, tier)]
    for text in csv_lines(rows, neutralised, ROLLUP_COLUMNS):
        yield text.encode()


def reading_query(params: dict[str, list[str]]) -> ReadingQuery:
    """The `/api/readings` parameters, checked."""
    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    def name(key: str) -> str | None:
        value = one(key)
        # Stored names are printable text (protocol.py); a NUL would also upset PostgreSQL.
        if value is not None and not value.isprintable():
            raise BadRequest(f"{key} must be printable text")
        return value

    def seconds(name: str) -> float | None:
        raw = one(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise BadRequest(f"{name} must be Unix seconds, got {raw[:40]!r}") from None
        if not math.isfinite(value):
            raise BadRequest(f"{name} must be finite")
        return value

    limit_raw = one("limit")
    limit = DEFAULT_LIMIT
    if limit_raw is not None:
        # ASCII digits only: "²" passes isdigit() but not int().
        if not (limit_raw.isascii() and limit_raw.isdigit()) \
                or len(limit_raw) > len(str(MAX_LIMIT)) or not 1 <= int(limit_raw) <= MAX_LIMIT:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_raw)
    return ReadingQuery(agent=name("agent"), sensor=name("sensor"), metric=name("metric"),
                        since=seconds("since"), until=seconds("until"), limit=limit)


def csv_tier(params: dict[str, list[str]]) -> str:
    """`/api/readings.csv?tier=`: raw readings (the default) or a rollup tier."""
    tier = params.get("tier", [RAW])[-1]
    if tier not in TIER_NAMES:
        raise BadRequest(f"tier must be one of {', '.join(TIER_NAMES)}")
    return tier


def series_query(params: dict[str, list[str]], web: Web) -> SeriesQuery:
    """The `/api/series` parameters, checked: those of `/api/readings` but `limit`, and
    `points`. `until` defaults to now, `since` to a day before `until`."""
    base = reading_query({k: v for k, v in params.items() if k != "limit"})
    now = time.time()
    until = min(base.until if base.until is not None else now, BUCKET_LIMIT)
    since = max(base.since if base.since is not None else until - DAY, -BUCKET_LIMIT)
    if since > until:
        raise BadRequest("since must not be after until")
    points = DEFAULT_POINTS
    raw = params.get("points", [None])[-1]
    if raw is not None:
        if not (raw.isascii() and raw.isdigit()) or not MIN_POINTS <= int(raw) <= MAX_POINTS:
            raise BadRequest(f"points must be a whole number from {MIN_POINTS} to {MAX_POINTS}")
        points = int(raw)
    days = web.config.retention_days
    return SeriesQuery(agent=base.agent, sensor=base.sensor, metric=base.metric, since=since,
                       until=until, points=points,
                       raw_since=None if days is None else now - days * DAY)
