"""HTTP on the collector's port, as a web page on another site and a hostile
client see it: DNS rebinding is refused, and no request of any shape to any
endpoint gets a 5xx or a traceback."""

from __future__ import annotations

import socket

import pytest
from conftest import TOKENS
from processes import HOST, Collector, fill_sqlite, http_exchange, http_request
from sensor_edge.config.loader import ConfigError, load_collector_config
from sensor_edge.server.web.hosts import AllowedHosts
from sensor_edge.server.web.hosts import same_origin

API_TOKEN = "api-token-0123456789abcdef"
COOKIE = f"sensor_edge_api_token={API_TOKEN}"
UPGRADE = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
# Everything a browser page can reach on the collector's port, and then some.
ENDPOINTS = ["/healthz", "/metrics", "/", "/static/dashboard.js", "/api/agents",
             "/api/readings", "/api/readings.csv", "/v1/live", "/v1/stream", "/no/such/thing"]
NAME_CHECKED = ["/", "/static/dashboard.js", "/api/agents", "/api/readings",
                "/api/readings.csv", "/no/such/thing"]


def get(collector: Collector, path: str, host: str | None = None, extra=(), upgrade=False):
    headers = [("Host", host or f"{HOST}:{collector.port}"), *extra]
    if upgrade:
        headers += UPGRADE
    return http_exchange(collector.port, http_request(path, headers))


# DNS rebinding


@pytest.fixture
def make_named(tmp_path, processes):
    def make(**extra) -> Collector:
        collector = Collector(tmp_path, TOKENS, **extra)
        collector.config["listen"]["allowed_hosts"] = ["collector.lan"]
        collector.write_config()
        processes.append(collector)
        return collector.start()
    return make


def test_a_name_that_is_not_ours_is_refused_where_readings_are(make_named):
    collector = make_named()
    port = collector.port
    for path in NAME_CHECKED:
        status, _, body = get(collector, path, f"evil.example:{port}")
        assert status == 421, path
        assert b"listen.allowed_hosts" in body
    # The live feed, as a rebinding page would open it: Origin and Host agree, both evil.
    status, _, _ = get(collector, "/v1/live", f"evil.example:{port}",
                       [("Origin", f"http://evil.example:{port}")], upgrade=True)
    assert status == 421
    # Monitoring may use any name; agents prove themselves by token.
    assert get(collector, "/healthz", f"evil.example:{port}")[0] == 200
    assert get(collector, "/metrics", f"evil.example:{port}")[0] == 200
    status, _, _ = get(collector, "/v1/stream", f"evil.example:{port}",
                       [("Authorization", f"Bearer {TOKENS['pi-1']}")], upgrade=True)
    assert status == 101


def test_our_own_names_and_the_listed_ones_are_answered(make_named):
    collector = make_named()
    port = collector.port
    for host in (f"{HOST}:{port}", HOST, f"localhost:{port}", f"[::1]:{port}",
                 f"{socket.gethostname()}:{port}", f"collector.lan:{port}",
                 f"Collector.LAN.:{port}"):
        assert get(collector, "/api/agents", host)[0] == 200, host
    origin = [("Origin", f"http://collector.lan:{port}")]
    assert get(collector, "/v1/live", f"collector.lan:{port}", origin, upgrade=True)[0] == 101
    # A listed Host does not make another site's page welcome.
    evil = [("Origin", f"http://evil.example:{port}")]
    assert get(collector, "/v1/live", f"collector.lan:{port}", evil, upgrade=True)[0] == 403


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1", True), ("127.0.0.1:8765", True), ("[::1]:8765", True), ("[fe80::1]", True),
    ("192.168.1.10:80", True), ("localhost:8765", True), ("LOCALHOST.", True),
    ("collector.lan:8765", True), ("evil.example:8765", False), ("localhost.evil.example", False),
    ("127.0.0.1.evil.example", False), ("evil@127.0.0.1", False), ("127.0.0.1/x", False),
    ("[::1", False), ("", False), (None, False), ("127.1", False), ("collector.lan:x", False),
    ("c" * 300, False),
])
def test_which_host_values_are_ours(host, allowed):
    assert AllowedHosts(["localhost", "collector.lan"]).allows(host) is allowed


def test_same_origin_wants_origin_and_host_to_agree_on_a_name_of_ours():
    ours = AllowedHosts(["localhost", "collector.lan"])
    assert same_origin(None, "evil.example", ours)  # not a browser
    assert same_origin("http://collector.lan:8765", "collector.lan:8765", ours)
    assert same_origin("https://127.0.0.1:8765", "127.0.0.1:8765", ours)
    assert not same_origin("http://evil.example:8765", "evil.example:8765", ours)
    assert not same_origin("http://collector.lan:8766", "collector.lan:8765", ours)
    assert not same_origin("null", "collector.lan:8765", ours)
    assert not same_origin("http://[", "collector.lan:8765", ours)
    assert not same_origin("http://collector.lan:8765", None, ours)


def test_allowed_hosts_is_a_list_of_names(tmp_path):
    config = tmp_path / "collector.yaml"
    config.write_text("listen:\n  allowed_hosts: [Collector.LAN, sensors.example.org.]\n")
    assert load_collector_config(str(config)).allowed_hosts == ("collector.lan",
                                                                "sensors.example.org")
    for line, bad in ((3, "collector.lan:8765"), (3, "http://collector.lan"), (3, "a b")):
        config.write_text(f"listen:\n  allowed_hosts:\n    - {bad}\n")
        with pytest.raises(ConfigError) as error:
            load_collector_config(str(config))
        assert str(error.value).startswith(f"{config}:{line}: listen.allowed_hosts[0]: "), bad
    config.write_text("listen:\n  allowed_hosts: collector.lan\n")
    with pytest.raises(ConfigError, match=r":2: listen.allowed_hosts: expected a list"):
        load_collector_config(str(config))


# Hostile requests: every endpoint, every odd input, never a 5xx


QUERIES = [
    "limit=%C2%B2", "limit=-1", "limit=0", "limit=1e3", "limit=" + "9" * 5000,
    "limit=1000001", "limit=1&limit=2", "limit=%20", "limit=0x10", "since=nan", "since=inf",
    "since=-inf", "since=1e999", "since=%C2%B2", "since=%D9%A1", "until=soon", "since=1_0",
    "agent=%00", "agent=%ED%A0%80", "agent=%FF", "sensor=a%0Ab", "metric=" + "m" * 3000,
    "%", "&&==&", "agent=%", "agent=pi-1&agent=pi-2", "=x", "limit", "since=",
]
HEADERS = {
    "two Authorization": [("Authorization", f"Bearer {API_TOKEN}"), ("Authorization", "Bearer x")],
    "two Host": [("Host", "evil.example")],
    "two Origin": [("Origin", "http://127.0.0.1"), ("Origin", "http://evil.example")],
    "two Cookie": [("Cookie", "a=b"), ("Cookie", "sensor_edge_api_token=wrong")],
    "bad cookie": [("Cookie", "sensor_edge_api_token=%ZZ%; ;;=;x")],
    "bare Bearer": [("Authorization", "Bearer")],
    "long Bearer": [("Authorization", "Bearer " + "x" * 6000)],
    "not ASCII": [("Authorization", "Bearer t\u00e9st"), ("X-Name", "\u00ff\u00fe")],
    "odd Origin": [("Origin", "http://[")],
    "null Origin": [("Origin", "null")],
    "Content-Length": [("Content-Length", "5")],
    "chunked body": [("Transfer-Encoding", "chunked")],
    "Expect": [("Expect", "100-continue")],
}
HOSTS = {"no Host": None, "empty Host": "", "userinfo Host": "evil@127.0.0.1",
         "broken IPv6 Host": "[::1", "long Host": "h" * 5000}


# Where a second copy of a header is read, so answered 400 rather than guessed at.
READ_ONCE = {"two Authorization": {"/api/agents", "/api/readings", "/api/readings.csv",
                                   "/v1/live", "/v1/stream"},
             "two Host": {*NAME_CHECKED, "/v1/live"},
             "two Origin": {"/v1/live"}}


def never_5xx(status: int, body: bytes, what: str) -> None:
    # 505 is the one 5xx a client earns: websockets speaks HTTP/1.1 only.
    assert 100 <= status < 500 or status == 505, f"{what}: {status} {body[:200]!r}"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def hostile(request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"hostile-http-{request.param}")
    if request.param == "sqlite":
        storage = str(workdir / "collector.db")
        fill_sqlite(storage, 3000)
    else:
        storage = request.getfixturevalue("postgres_databases").create()
    collector = Collector(workdir, TOKENS, storage=storage, api={"token": API_TOKEN},
                          limits={"bad_token_max_delay": 0}).start()
    yield collector
    collector.kill()


class TestHostileRequests:
    """Odd query values, duplicated and malformed headers, odd request lines."""

    @pytest.mark.parametrize("endpoint", ENDPOINTS)
    @pytest.mark.parametrize("query", QUERIES)
    def test_odd_query_values(self, hostile, endpoint, query):
        extra = [("Cookie", COOKIE), ("Origin", f"http://{HOST}:{hostile.port}")]
        if endpoint == "/v1/stream":
            extra = [("Authorization", f"Bearer {TOKENS['pi-1']}")]
        for upgrade in (False, True) if endpoint.startswith("/v1/") else (False,):
            status, _, body = get(hostile, f"{endpoint}?{query}", extra=extra, upgrade=upgrade)
            never_5xx(status, body, f"{endpoint}?{query}")

    @pytest.mark.parametrize("endpoint", ENDPOINTS)
    @pytest.mark.parametrize("case", HEADERS)
    def test_duplicated_and_malformed_headers(self, hostile, endpoint, case):
        body = b"hello" if case == "Content-Length" else b""
        for upgrade in (False, True) if endpoint.startswith("/v1/") else (False,):
            headers = [("Host", f"{HOST}:{hostile.port}"), ("Cookie", COOKIE), *HEADERS[case]]
            if upgrade:
                headers += UPGRADE
            request = http_request(endpoint + "?limit=5", headers, body=body)
            status, _, answer = http_exchange(hostile.port, request)
            never_5xx(status, answer, f"{endpoint} with {case}")
            if endpoint in READ_ONCE.get(case, ()):
                assert status == 400, f"{endpoint} with {case}: {status}"

    @pytest.mark.parametrize("endpoint", ENDPOINTS)
    @pytest.mark.parametrize("case", HOSTS)
    def test_missing_and_malformed_host(self, hostile, endpoint, case):
        host = HOSTS[case]
        headers = [("Cookie", COOKIE)] + ([] if host is None else [("Host", host)])
        status, _, body = http_exchange(hostile.port, http_request(endpoint, headers))
        never_5xx(status, body, f"{endpoint} with {case}")
        if endpoint not in ("/healthz", "/metrics", "/v1/stream"):
            assert status in (400, 421), f"{endpoint} with {case}: {status}"

    @pytest.mark.parametrize("endpoint", ENDPOINTS)
    @pytest.mark.parametrize("method, target, version", [
        ("POST", "{}", "HTTP/1.1"), ("HEAD", "{}", "HTTP/1.1"), ("GET", "{}", "HTTP/1.0"),
        ("GET", "http://127.0.0.1{}", "HTTP/1.1"), ("GET", "//[{}", "HTTP/1.1"),
        ("GET", "{}#frag", "HTTP/1.1"), ("GET", "{}?" + "q" * 9000, "HTTP/1.1"),
        ("GET", "{}", "HTTP/2.0"), ("GET", "{}/../../etc/passwd", "HTTP/1.1"),
    ])
    def test_odd_request_lines(self, hostile, endpoint, method, target, version):
        request = http_request(target.format(endpoint), [("Host", f"{HOST}:{hostile.port}"),
                                                         ("Cookie", COOKIE)], method, version)
        status, _, body = http_exchange(hostile.port, request)
        never_5xx(status, body, f"{method} {target.format(endpoint)[:60]} {version}")


def test_no_hostile_request_left_a_traceback(hostile):
    assert hostile.get("/healthz")[0] == 200
    log = hostile.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
