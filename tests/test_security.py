"""Who gets in: TLS and mutual TLS with a LAN CA made here by openssl, tokens minted by
add-agent and stored only as hashes, the API token, bad tokens slowed down, the
connection limit, and no token ever in a log line or an error message."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from certs import PKI, make_pki
from conftest import TOKENS
from processes import HOST, Collector, free_port, wait_until
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.sync.client import connect


class TLSCollector(Collector):
    """A collector serving wss:// and https:// with the test's certificates."""

    def __init__(self, workdir: Path, agents: dict[str, str], pki: PKI, mutual: bool = False,
                 **extra):
        port = free_port()
        tls = {"cert": str(pki.collector_cert), "key": str(pki.collector_key)}
        if mutual:
            tls["client_ca"] = str(pki.ca)
        super().__init__(workdir, agents, port=port,
                         listen={"host": HOST, "port": port, "tls": tls}, **extra)
        # What a well-configured client (an agent, curl) trusts and presents.
        self.client_tls = ssl.create_default_context(cafile=str(pki.ca))
        if mutual:
            self.client_tls.load_cert_chain(str(pki.agent_cert), str(pki.agent_key))

    @property
    def base(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"wss://{HOST}:{self.port}/v1/stream"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_tls_collector(tmp_path, processes, pki):
    def make(mutual: bool = False, start: bool = True, **extra) -> TLSCollector:
        collector = TLSCollector(tmp_path, TOKENS, pki, mutual=mutual, **extra)
        processes.append(collector)
        return collector.start() if start else collector

    return make


def tls_agent(make_agent, collector, pki: PKI, agent_id: str = "pi-1", name: str | None = None,
              **tls) -> object:
    """A mock agent whose collector section has the given TLS keys (ca, cert, key)."""
    agent = make_agent(collector, agent_id, name=name, start=False)
    agent.config["collector"].update({k: str(v) for k, v in tls.items()})
    agent.write_config()
    return agent.start()


def test_agent_streams_over_wss_trusting_only_the_lan_ca(make_tls_collector, make_agent, pki):
    collector = make_tls_collector()
    agent = tls_agent(make_agent, collector, pki, ca=pki.ca)
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 20, 20, what="readings over wss://")
    assert "TLS" in collector.log()
    # Plain ws:// on the same port gets nowhere.
    with pytest.raises((InvalidMessage, OSError)), \
            connect(f"ws://{HOST}:{collector.port}/v1/stream", open_timeout=5,
                    additional_headers={"Authorization": f"Bearer {TOKENS['pi-2']}"}):
        pass
    assert agent.terminate() == 0
    stored = collector.stored_seqs("pi-1", agent.epoch())
    assert stored == list(range(1, len(stored) + 1))


def test_agent_refuses_a_collector_its_ca_did_not_sign(make_tls_collector, make_agent, pki):
    collector = make_tls_collector()
    agent = tls_agent(make_agent, collector, pki, ca=pki.other_ca)
    wait_until(lambda: "certificate verify failed" in agent.log(), 15,
               what="the agent to refuse the collector's certificate")
    wait_until(lambda: agent.last_seq() > 5, 15, what="readings kept in the buffer meanwhile")
    assert collector.stored_seqs("pi-1") == []
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log()


def test_mutual_tls_lets_in_only_certificates_of_the_lan_ca(make_tls_collector, make_agent, pki):
    collector = make_tls_collector(mutual=True)
    good = tls_agent(make_agent, collector, pki, "pi-1", ca=pki.ca, cert=pki.agent_cert,
                     key=pki.agent_key)
    no_cert = tls_agent(make_agent, collector, pki, "pi-2", ca=pki.ca)
    stranger = tls_agent(make_agent, collector, pki, "pi-3", ca=pki.ca, cert=pki.stranger_cert,
                         key=pki.stranger_key)
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 20, 20,
               what="readings from the agent with a LAN certificate")
    # The others hold valid tokens but never get as far as presenting them.
    wait_until(lambda: no_cert.last_seq() > 5 and stranger.last_seq() > 5, 15,
               what="the refused agents to keep reading")
    assert "cannot reach collector" in no_cert.log() and "cannot reach collector" in stranger.log()
    assert collector.stored_seqs("pi-2") == [] and collector.stored_seqs("pi-3") == []
    # The HTTP side shares the port, so it wants a client certificate too.
    status, _, _ = collector.get("/healthz")
    assert status == 200
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(collector.base + "/healthz", timeout=10, context=anonymous).read()
    for agent in (good, no_cert, stranger):
        assert agent.terminate() == 0


def test_unusable_certificates_are_one_line_startup_errors(tmp_path, make_tls_collector, pki):
    collector = make_tls_collector(start=False)
    collector.config["listen"]["tls"]["key"] = str(pki.agent_key)  # not the certificate's key
    collector.write_config()
    result = subprocess.run([sys.executable, "-m", "sensor_edge.server", "--config",
                             str(collector.config_path)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "sensor-collector: cannot start: listen.tls: cannot use certificate")
    assert "key values mismatch" in result.stderr and "Traceback" not in result.stderr

    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
    agent_config = tmp_path / "agent-bad-ca.yaml"
    agent_config.write_text(
        f"agent: {{id: pi-1}}\ncollector:\n  url: wss://{HOST}:{collector.port}/v1/stream\n"
        f"  token: \"{TOKENS['pi-1']}\"\n  ca: {garbage}\n"
        f"buffer: {{path: {tmp_path / 'bad-ca.db'}}}\nbackend: mock\n")
    result = subprocess.run([sys.executable, "-m", "sensor_edge.agent", "--config",
                             str(agent_config)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 1
    assert "sensor-agent: cannot start: collector.ca: cannot load CA certificates" in result.stderr
    assert "Traceback" not in result.stderr


CONFIG_WITH_COMMENTS = """\
# The collector of the house. Keep this comment.
listen:
  host: 127.0.0.1
  port: {port}
storage: {storage}
agents:
  - id: pi-1       # the kitchen
    token: "{token}"
  # pi-2 went to the garage; keep this comment too
stale_after: 30
"""


def add_agent(config: Path, agent_id: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor_edge.server", "add-agent", agent_id,
                           "--config", str(config)], capture_output=True, text=True, timeout=30,
                          check=False)


def test_add_agent_mints_a_token_stores_only_its_hash_and_lets_that_agent_in(
        make_collector, make_agent):
    collector = make_collector(start=False)
    before = CONFIG_WITH_COMMENTS.format(port=collector.port, storage=collector.storage,
                                         token=TOKENS["pi-1"])
    collector.config_path.write_text(before)
    result = add_agent(collector.config_path, "pi-new")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token), "one URL-safe token, alone on stdout"
    assert token not in result.stderr
    after = collector.config_path.read_text()
    assert token not in after
    assert f'token_sha256: "{hashlib.sha256(token.encode()).hexdigest()}"' in after
    # The operator's file is as it was, plus the entry.
    assert after.startswith(before.split("  # pi-2")[0])
    assert "# The collector of the house. Keep this comment." in after
    assert "  # pi-2 went to the garage; keep this comment too" in after
    assert "pi-1       # the kitchen" in after

    # The same id again is refused and the file is left alone; so is a bad id.
    again = add_agent(collector.config_path, "pi-new")
    assert again.returncode == 2 and again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1 and "already" in again.stderr
    assert add_agent(collector.config_path, "not/an id").returncode == 2
    assert collector.config_path.read_text() == after

    collector.start()
    agent = make_agent(collector, "pi-new", token=token)
    wait_until(lambda: len(collector.stored_seqs("pi-new")) > 10, 20,
               what="readings from the agent added with add-agent")
    assert agent.terminate() == 0


def tokens_in(text: str, secrets_: list[str], window: int = 8) -> list[str]:
    """Every secret (or any `window` characters of one) that shows up in `text`."""
    found = []
    for secret in secrets_:
        for i in range(len(secret) - window + 1):
            if secret[i:i + window] in text:
                found.append(secret[i:i + window])
                break
    return found


def handshake(collector: Collector, token: str) -> int:
    """Open /v1/stream with a token; the HTTP status of the answer (101 when in)."""
    try:
        with connect(collector.stream_url, open_timeout=10,
                     additional_headers={"Authorization": f"Bearer {token}"}):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def test_no_token_full_or_partial_reaches_a_log_line(make_collector, make_agent, tmp_path):
    agent_tokens = {f"pi-{i}": secrets.token_urlsafe(24) for i in range(1, 4)}
    api_token = secrets.token_urlsafe(24)
    wrong = [secrets.token_urlsafe(24) for _ in range(3)]
    collector = make_collector(agents=agent_tokens, start=False, api={"token": api_token})
    minted = add_agent(collector.config_path, "pi-minted")
    assert minted.returncode == 0
    minted_token = minted.stdout.strip()
    collector.args = ("--verbose",)
    collector.start()

    right = make_agent(collector, "pi-1", token=agent_tokens["pi-1"], start=False)
    right.args = ("--mock", "--verbose")
    right.start()
    added = make_agent(collector, "pi-minted", token=minted_token)
    bad = make_agent(collector, "pi-2", token=wrong[0])  # a wrong token, retried with backoff
    for token in wrong[1:] + [agent_tokens["pi-3"][:-4] + "AAAA"]:
        assert handshake(collector, token) == 401
    assert collector.get("/api/agents", {"Authorization": f"Bearer {wrong[1]}"})[0] == 401
    assert collector.get("/api/agents", {"Authorization": f"Bearer {api_token}"})[0] == 200
    wait_until(lambda: collector.stored_seqs("pi-1") and collector.stored_seqs("pi-minted"), 20,
               what="readings from the agents with right tokens")
    wait_until(lambda: "401" in bad.log(), 15, what="the wrong-token agent to log its 401")
    for agent in (right, added, bad):
        agent.terminate()
    collector.terminate()

    logs = {"collector": collector.log(), "add-agent stderr": minted.stderr,
            **{agent.name: agent.log() for agent in (right, added, bad)}}
    assert all(logs.values()), "every log has something in it"
    everything = [*agent_tokens.values(), api_token, minted_token, *wrong]
    for name, text in logs.items():
        assert tokens_in(text, everything) == [], f"a token leaked into the {name} log"


def test_bad_tokens_from_one_address_are_slowed_down(make_collector):
    collector = make_collector(limits={"bad_token_max_delay": 1.0})
    timings = []
    for i in range(8):
        started = time.monotonic()
        assert handshake(collector, f"guess-{i}-{secrets.token_hex(8)}") == 401
        timings.append(time.monotonic() - started)
    # The first five are answered at once; then 0.25, 0.5, 1 s (the cap).
    assert timings[7] >= 0.9 and timings[6] >= 0.45 and timings[5] >= 0.2, timings
    # A right token from the same address is not held up by someone else's guesses.
    assert handshake(collector, TOKENS["pi-1"]) == 101


def test_connections_past_the_limit_get_503(make_collector):
    collector = make_collector(limits={"max_connections": 2})
    def headers(agent: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[agent]}"}

    with connect(collector.stream_url, additional_headers=headers("pi-1"), open_timeout=10), \
            connect(collector.stream_url, additional_headers=headers("pi-2"), open_timeout=10):
        with pytest.raises(InvalidStatus) as refused, \
                connect(collector.stream_url, additional_headers=headers("pi-3"),
                        open_timeout=10):
            pass
        assert refused.value.response.status_code == 503
        assert collector.get("/healthz")[0] == 200  # plain HTTP is not a held connection
    # Once the others have gone, there is room again.
    wait_until(lambda: handshake(collector, TOKENS["pi-3"]) == 101, 10,
               what="a connection once the others closed")
    metrics = collector.get("/metrics")[1].decode()
    assert 'sensor_edge_connections_refused_total{limit="max_connections"} 1.0' in metrics


def test_api_token_guards_the_read_api_and_the_live_feed(make_collector):
    api_token = secrets.token_urlsafe(24)
    collector = make_collector(api={"token": api_token})
    for path in ("/api/agents", "/api/readings", "/api/readings.csv"):
        assert collector.get(path)[0] == 401
        assert collector.get(path, {"Authorization": "Bearer nope"})[0] == 401
        assert collector.get(path, {"Authorization": f"Bearer {api_token}"})[0] == 200
    # The dashboard's cookie works too (browsers cannot set headers on a WebSocket).
    cookie = {"Cookie": f"theme=dark; sensor_edge_api_token={api_token}"}
    status, body, _ = collector.get("/api/agents", cookie)
    assert status == 200 and "agents" in json.loads(body)
    # Health and metrics stay open for monitoring; the page itself holds no data.
    assert collector.get("/healthz")[0] == 200
    assert collector.get("/metrics")[0] == 200
    live = f"ws://{HOST}:{collector.port}/v1/live"
    origin = {"Origin": f"http://{HOST}:{collector.port}"}
    with pytest.raises(InvalidStatus) as refused, \
            connect(live, additional_headers=origin, open_timeout=10):
        pass
    assert refused.value.response.status_code == 401
    with connect(live, additional_headers={**origin, **cookie}, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "agents"
    # Another site's page in the same browser: the cookie rides along, Origin gives it away.
    with pytest.raises(InvalidStatus) as refused, \
            connect(live, additional_headers={"Origin": "http://evil.example", **cookie},
                    open_timeout=10):
        pass
    assert refused.value.response.status_code == 403
