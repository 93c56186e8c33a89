"""HTTP on the collector's port: health, metrics, the read API and the page.

websockets hands every request to :func:`route` before any upgrade; it
answers plain HTTP requests itself and lets `/v1/stream` through to the
WebSocket handler once the bearer token names an agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from sensor_edge.server.web import dashboard
from sensor_edge.server.commands.export import readings_csv
from sensor_edge.server.outputs.live import LIVE_PATH, same_origin
from sensor_edge.contract.protocol import STREAM_PATH
from sensor_edge.server.storage import ReadingQuery
from sensor_edge.server.storage.retention import DAY
from sensor_edge.server.storage.rollups import (
    BUCKET_LIMIT, DEFAULT_POINTS, MAX_POINTS, MIN_POINTS, RAW, ROLLUP_COLUMNS, TIER_NAMES,
    SeriesQuery)

if TYPE_CHECKING:
    from sensor_edge.server.collector import Collector

DEFAULT_LIMIT = 1000
MAX_LIMIT = 1_000_000
# Browsers cannot put an Authorization header on a WebSocket handshake: with
# `api.token` set, the dashboard keeps the token in this (same-site) cookie.
API_TOKEN_COOKIE = "sensor_edge_api_token"


class BadRequest(Exception):
    pass


def respond(status: int, body: bytes | str, content_type: str) -> Response:
    if isinstance(body, str):
        body = body.encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
              404: "Not Found",
              405: "Method Not Allowed", 503: "Service Unavailable"}.get(status, "")
    headers = Headers([
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
    ])
    return Response(status, reason, headers, body)


def respond_json(status: int, value: Any) -> Response:
    return respond(status, json.dumps(value, separators=(",", ":")), "application/json")


def agent_for_token(collector: Collector, authorization: str | None) -> str | None:
    """The agent a `Bearer` token belongs to, compared in constant time."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    offered = authorization[len("Bearer "):].strip().encode()
    offered_hash = hashlib.sha256(offered).hexdigest().encode()
    found = None
    for credential in collector.config.agents:
        # Check every credential, so the time taken says nothing about which matched.
        if credential.token is not None:
            match = hmac.compare_digest(offered, credential.token.encode())
        else:
            match = hmac.compare_digest(offered_hash, credential.token_sha256.encode())
        if match:
            found = credential.id
    return found


def api_token_ok(collector: Collector, request: Request) -> bool:
    """With `api.token` set: does the request carry it (header, or the dashboard's cookie)?"""
    expected = collector.config.api_token
    if expected is None:
        return True
    offered = ""
    authorization = request.headers.get("Authorization")
    if authorization and authorization.startswith("Bearer "):
        offered = authorization[len("Bearer "):].strip()
    else:
        for header in request.headers.get_all("Cookie"):
            for pair in header.split(";"):
                name, _, value = pair.strip().partition("=")
                if name == API_TOKEN_COOKIE:
                    offered = unquote(value)
    return hmac.compare_digest(offered.encode(), expected.encode())


async def unauthorized(collector: Collector, connection: ServerConnection) -> Response:
    """A 401, after a delay that grows with the bad tokens this address has sent."""
    collector.metrics.auth_failures.inc()
    address = connection.remote_address[0] if connection.remote_address else "?"
    delay = collector.failed_logins.failed(address, time.monotonic())
    if delay > 0:
        # Under half the handshake timeout, so the client still gets its answer.
        await asyncio.sleep(min(delay, collector.config.limits.handshake_timeout / 2))
    response = respond_json(401, {"error": "unauthorized",
                                  "detail": "a valid 'Authorization: Bearer' token is required"})
    response.headers["WWW-Authenticate"] = 'Bearer realm="sensor-collector"'
    return response


def too_many_connections(collector: Collector) -> Response | None:
    """A 503 when `limits.max_connections` WebSocket connections are open already."""
    if collector.open_connections < collector.config.limits.max_connections:
        return None
    collector.metrics.connections_refused.inc()
    response = respond_json(503, {"error": "too_many_connections",
                                  "detail": "the collector is at its connection limit"})
    response.headers["Retry-After"] = "5"
    return response


async def route(collector: Collector, connection: ServerConnection,
                request: Request) -> Response | None:
    url = urlsplit(request.path)
    path = url.path
    if path == STREAM_PATH:
        agent_id = agent_for_token(collector, request.headers.get("Authorization"))
        if agent_id is None:
            return await unauthorized(collector, connection)
        refused = too_many_connections(collector)
        if refused is not None:
            return refused
        connection.agent_id = agent_id  # type: ignore[attr-defined]
        return None
    if (path.startswith("/api/") or path == LIVE_PATH) and not api_token_ok(collector, request):
        return await unauthorized(collector, connection)
    if path == LIVE_PATH:
        refused = too_many_connections(collector)
        if refused is not None:
            return refused
        if not same_origin(request.headers.get("Origin"), request.headers.get("Host")):
            return respond_json(403, {"error": "forbidden",
                                      "detail": "the live feed is for this collector's own page"})
        connection.live = True  # type: ignore[attr-defined]
        return None
    try:
        if path == "/healthz":
            return respond_json(200, {"status": "ok"})
        if path == "/metrics":
            return respond(200, collector.metrics.render(), collector.metrics.content_type)
        if path == "/api/agents":
            return respond_json(200, {"agents": collector.agents.as_json()})
        if path == "/api/alerts":
            return respond_json(200, {"alerts": collector.alerts.as_json()})
        if path == "/api/readings":
            query = reading_query(parse_qs(url.query, keep_blank_values=False))
            rows = await collector.read(collector.storage.readings, query)
            return respond_json(200, {"readings": rows})
        if path == "/api/series":
            query = series_query(parse_qs(url.query, keep_blank_values=False), collector)
            return respond_json(200, await collector.read(collector.storage.series, query))
        if path == "/api/readings.csv":
            params = parse_qs(url.query, keep_blank_values=False)
            query, tier = reading_query(params), csv_tier(params)
            if tier == RAW:
                rows = await collector.read(collector.storage.readings, query)
                body = readings_csv(rows)
            else:
                rows = await collector.read(collector.storage.rollup_rows, query, tier)
                body = readings_csv(rows, ROLLUP_COLUMNS)
            response = respond(200, body, "text/csv; charset=utf-8")
            response.headers["Content-Disposition"] = 'attachment; filename="readings.csv"'
            return response
        asset = dashboard.asset(path)
        if asset is not None:
            return respond(200, *asset)
    except BadRequest as e:
        return respond_json(400, {"error": "bad_request", "detail": str(e)})
    return respond_json(404, {"error": "not_found", "detail": f"no such endpoint: {path}"})


def reading_query(params: dict[str, list[str]]) -> ReadingQuery:
    """The `/api/readings` parameters, checked."""
    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

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
        # isascii: str.isdigit() takes "²", which int() refuses.
        if not (limit_raw.isascii() and limit_raw.isdigit()) \
                or not 1 <= int(limit_raw) <= MAX_LIMIT:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_raw)
    return ReadingQuery(agent=one("agent"), sensor=one("sensor"), metric=one("metric"),
                        since=seconds("since"), until=seconds("until"), limit=limit)


def csv_tier(params: dict[str, list[str]]) -> str:
    """`/api/readings.csv?tier=`: raw readings (the default) or a rollup tier."""
    tier = params.get("tier", [RAW])[-1]
    if tier not in TIER_NAMES:
        raise BadRequest(f"tier must be one of {', '.join(TIER_NAMES)}")
    return tier


def series_query(params: dict[str, list[str]], collector: Collector) -> SeriesQuery:
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
    days = collector.config.retention_days
    return SeriesQuery(agent=base.agent, sensor=base.sensor, metric=base.metric, since=since,
                       until=until, points=points,
                       raw_since=None if days is None else now - days * DAY)
