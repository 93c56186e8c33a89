"""`sensor-collector add-agent ID --config FILE`: let a new agent in.

The token is random, printed once on standard output, and only its sha256
goes into the config file, so the file (and its backups) never hold a
usable secret. The file is edited as text, an entry appended to `agents:`,
so the operator's comments and layout stay as they were; the result is
checked with the real loader before it replaces the file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
import tempfile

import yaml

from sensor_edge.config import ConfigError, load_collector_config
from sensor_edge.config.loader import NAME_PATTERN
from sensor_edge.config.model import CollectorConfig

# 32 random bytes: 43 URL-safe characters, nothing to escape in YAML or a header.
TOKEN_BYTES = 32


class AdminError(Exception):
    """An operator mistake; ``str()`` is the one-line message."""


def token_sha256(token: str) -> str:
    """What the config stores for a token: its lowercase hex sha256."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_agent(path: str, config: CollectorConfig, agent_id: str) -> str:
    """Append ``agent_id`` with a new token's hash to the config at ``path``; return the token."""
    if not NAME_PATTERN.match(agent_id):
        raise AdminError(f"{agent_id[:64]!r} is not a valid agent id (letters, digits, '.', "
                         "'_', '-'; at most 64)")
    if any(agent.id == agent_id for agent in config.agents):
        raise AdminError(f"agent {agent_id!r} is already in {path}; pick another id, or remove "
                         "its entry first to give it a new token")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    updated = with_agent(text, agent_id, token_sha256(token))
    _replace(path, updated, agent_id)
    return token


def with_agent(text: str, agent_id: str, digest: str) -> str:
    """The config text with one more `agents:` entry, everything else left as it was."""
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise AdminError("the config file is not a mapping of keys")
    agents = next((value for key, value in root.value
                   if isinstance(key, yaml.ScalarNode) and key.value == "agents"), None)
    flow_entry = f'{{id: {agent_id}, token_sha256: "{digest}"}}'
    if agents is None:  # no agents yet: a new section at the end
        return _ensure_newline(text) + f'agents:\n  - id: {agent_id}\n    token_sha256: "{digest}"\n'
    if isinstance(agents, yaml.ScalarNode) and agents.tag == "tag:yaml.org,2002:null":
        # `agents:` with nothing (or ~, null) after it: the value becomes a one-entry list.
        start, end = agents.start_mark.index, agents.end_mark.index
        return text[:start] + (" " if start == end else "") + f"[{flow_entry}]" + text[end:]
    if not isinstance(agents, yaml.SequenceNode):
        raise AdminError("'agents' is not a list")
    if agents.flow_style:  # agents: [...]: insert before the closing bracket
        close = agents.end_mark.index - 1
        return text[:close] + (", " if agents.value else "") + flow_entry + text[close:]
    # A block list: a new item after the last line of the last one, indented like it.
    dash = " " * agents.start_mark.column
    key = " " * agents.value[0].start_mark.column
    end = _last_mark(agents.value[-1])
    lines = text.splitlines(keepends=True)
    at = end.line if end.column == 0 else end.line + 1
    head = _ensure_newline("".join(lines[:at]))
    entry = f'{dash}- id: {agent_id}\n{key}token_sha256: "{digest}"\n'
    return head + entry + "".join(lines[at:])


def _last_mark(node: yaml.Node) -> yaml.Mark:
    """Where the text of a node really ends (a block mapping's own end mark may run on)."""
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.value and \
            not node.flow_style:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node.end_mark


def _ensure_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _replace(path: str, text: str, agent_id: str) -> None:
    """Write next to the file, check it with the loader, then swap it in (atomic on POSIX)."""
    folder = os.path.dirname(os.path.abspath(path))
    status = os.stat(path)
    fd, temporary = tempfile.mkstemp(prefix=".add-agent-", suffix=".yaml", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, status.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(temporary, status.st_uid, status.st_gid)
        try:
            check = load_collector_config(temporary)
        except ConfigError:
            check = None
        if check is None or not any(a.id == agent_id and a.token_sha256 for a in check.agents):
            raise AdminError(f"could not append to the agents list of {path} without "
                             "rewriting it; add the agent by hand")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def main(args: argparse.Namespace, config: CollectorConfig) -> int:
    """The `add-agent` command: the token on stdout (only there, only now), the rest on stderr."""
    try:
        token = add_agent(args.config, config, args.agent_id)
    except AdminError as e:
        print(f"sensor-collector: add-agent: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sensor-collector: add-agent: cannot update {args.config}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    print(token)
    print(f"sensor-collector: added agent {args.agent_id!r} to {args.config}; only the token's "
          "sha256 is stored there. This is the only time the token is shown: put it in the "
          "agent's config as collector.token, then restart the collector.", file=sys.stderr)
    return 0
