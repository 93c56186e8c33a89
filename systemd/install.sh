#!/usr/bin/env bash
# Install sensor-edge as systemd services: a dedicated user per service, a venv
# in /opt/sensor-edge, example configs in /etc/sensor-edge (an edited config is
# never overwritten), the units in /etc/systemd/system, enabled. Safe to run
# again: it converges on the same result (and upgrades the package in the venv).
#
#   sudo systemd/install.sh --agent        # on the Raspberry Pi
#   sudo systemd/install.sh --collector    # on the LAN host
#   sudo systemd/install.sh --uninstall [--purge]
#   systemd/install.sh --root DIR ...      # test mode, see usage()
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install.sh [--agent] [--collector] [--start] [--root DIR] [--python PY]
       install.sh --uninstall [--purge] [--agent] [--collector] [--root DIR]

  --agent       the Pi side: sensor-agent (user sensor-agent, in group gpio)
  --collector   the LAN side: sensor-collector (user sensor-collector)
                (neither given: both)
  --start       also (re)start the services and show their status
  --uninstall   disable and remove the units and /opt/sensor-edge; keep the
                configs in /etc/sensor-edge and the data in /var/lib
  --purge       with --uninstall: remove configs, data and users too
  --root DIR    test mode: write every file under DIR and print, without
                running, each command that would change the system (apt-get,
                useradd, the venv, systemctl), prefixed with "would run:"
  --python PY   the Python for the venv (default python3, >= 3.11)
EOF
}

ROLES=()
ROOT=""
UNINSTALL=0
PURGE=0
START=0
PYTHON=python3
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) ROLES+=(agent) ;;
    --collector) ROLES+=(collector) ;;
    --start) START=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --root) ROOT="${2:?--root needs a directory}"; shift ;;
    --root=*) ROOT="${1#--root=}" ;;
    --python) PYTHON="${2:?--python needs a program}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#ROLES[@]} -gt 0 ] || ROLES=(agent collector)
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
  echo "install.sh: --purge goes with --uninstall" >&2; exit 2
fi

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/sensor-edge
VENV="$PREFIX/venv"
ETC=/etc/sensor-edge
UNITS=/etc/systemd/system

if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
elif [ "$(id -u)" != 0 ]; then
  echo "install.sh: run it as root (sudo), or with --root DIR to see what it would do" >&2
  exit 1
fi

say() { echo "install.sh: $*"; }
# A command that changes the system outside the files we write: run it, or in
# test mode only show it.
run() {
  if [ -n "$ROOT" ]; then echo "would run: $*"; else "$@"; fi
}
has_role() { [[ " ${ROLES[*]} " == *" $1 "* ]]; }
user_exists() { getent passwd "$1" >/dev/null; }
group_exists() { getent group "$1" >/dev/null; }

uninstall() {
  local role unit
  for role in "${ROLES[@]}"; do
    unit="sensor-$role.service"
    if [ -e "$ROOT$UNITS/$unit" ]; then
      run systemctl disable --now "$unit"
      rm -f "$ROOT$UNITS/$unit"
      say "removed $UNITS/$unit"
    fi
  done
  run systemctl daemon-reload
  # The venv serves both roles: it goes when no unit is left that uses it.
  if [ ! -e "$ROOT$UNITS/sensor-agent.service" ] && [ ! -e "$ROOT$UNITS/sensor-collector.service" ]; then
    rm -rf "$ROOT$PREFIX"
    say "removed $PREFIX"
  fi
  if [ "$PURGE" = 1 ]; then
    for role in "${ROLES[@]}"; do
      rm -f "$ROOT$ETC/$role.yaml" "$ROOT$ETC/$role.yaml.example"
      rm -rf "$ROOT/var/lib/sensor-$role"
      say "removed $ETC/$role.yaml and /var/lib/sensor-$role"
      if user_exists "sensor-$role"; then run userdel "sensor-$role"; fi
    done
    rmdir "$ROOT$ETC" 2>/dev/null || true
  else
    say "kept $ETC and the data in /var/lib (--purge removes them)"
  fi
}

apt_packages() {
  # python3-venv for the venv; on the Pi, python3-lgpio (gpiozero's pin factory
  # on every model, the Pi 5 included; the venv sees it through
  # --system-site-packages) and libgpiod2 (the DHT library's pulse reader).
  local want=(python3-venv) missing=() p
  has_role agent && want+=(python3-lgpio libgpiod2)
  command -v dpkg-query >/dev/null || return 0
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    run apt-get update
    run apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

# The agent's device groups: GPIO, the I2C buses (/dev/i2c-*), SPI (/dev/spidev*).
AGENT_GROUPS=(gpio i2c spi)

users() {
  local role user group
  if has_role agent; then
    for group in "${AGENT_GROUPS[@]}"; do
      # Raspberry Pi OS has them (udev gives them the device nodes); elsewhere
      # the unit's SupplementaryGroups= needs them to exist.
      group_exists "$group" || run groupadd --system "$group"
    done
  fi
  for role in "${ROLES[@]}"; do
    user="sensor-$role"
    if ! user_exists "$user"; then
      local groups=()
      [ "$role" = agent ] && groups=(--groups "$(IFS=,; echo "${AGENT_GROUPS[*]}")")
      run useradd --system --user-group "${groups[@]}" --home-dir "/var/lib/$user" \
        --no-create-home --shell /usr/sbin/nologin "$user"
    elif [ "$role" = agent ]; then
      for group in "${AGENT_GROUPS[@]}"; do
        id -nG "$user" | tr ' ' '\n' | grep -qx "$group" || \
          run usermod --append --groups "$group" "$user"
      done
    fi
  done
}

venv() {
  local extra=""
  # Every sensor's driver: each is imported only when a sensor of its type is configured.
  has_role agent && extra="[dht,onewire,i2c]"
  if [ ! -x "$ROOT$VENV/bin/python" ]; then
    run "$PYTHON" -m venv --system-site-packages "$VENV"
  fi
  run "$VENV/bin/pip" install --quiet --upgrade "$SRC$extra"
}

configs() {
  local role example target
  mkdir -p "$ROOT$ETC"
  chmod 0755 "$ROOT$ETC"
  for role in "${ROLES[@]}"; do
    example="$SRC/config/$role.example.yaml"
    target="$ROOT$ETC/$role.yaml"
    # The current example always sits next to the config, for reference.
    install -m 0644 "$example" "$target.example"
    if [ -e "$target" ]; then
      say "kept $ETC/$role.yaml (yours); the current example is $ETC/$role.yaml.example"
    else
      # Readable by the service's user only: it holds tokens.
      install -m 0640 "$example" "$target"
      run chgrp "sensor-$role" "$ETC/$role.yaml"
      say "wrote $ETC/$role.yaml from the example: edit it"
    fi
  done
}

units() {
  local role unit
  mkdir -p "$ROOT$UNITS"
  for role in "${ROLES[@]}"; do
    unit="sensor-$role.service"
    install -m 0644 "$SRC/systemd/$unit" "$ROOT$UNITS/$unit"
    say "installed $UNITS/$unit"
  done
  run systemctl daemon-reload
  for role in "${ROLES[@]}"; do
    run systemctl enable "sensor-$role.service"
  done
  if [ "$START" = 1 ]; then
    for role in "${ROLES[@]}"; do
      run systemctl restart "sensor-$role.service"
      run systemctl --no-pager status "sensor-$role.service" || true
    done
  fi
}

next_steps() {
  echo
  echo "Next:"
  if has_role collector; then
    echo "  on the collector: edit $ETC/collector.yaml (an id and a token per Pi), then"
    echo "    sudo systemctl start sensor-collector"
    echo "    systemctl status sensor-collector"
  fi
  if has_role agent; then
    echo "  on the Pi: edit $ETC/agent.yaml (agent id, collector url and token, sensors),"
    echo "  check the wiring (with the agent stopped), start it and watch it:"
    echo "    sudo -u sensor-agent $VENV/bin/sensor-agent probe --config $ETC/agent.yaml"
    echo "    sudo systemctl start sensor-agent"
    echo "    systemctl status sensor-agent"
    echo "    journalctl -u sensor-agent -f"
  fi
}

if [ "$UNINSTALL" = 1 ]; then
  uninstall
  exit 0
fi
apt_packages
users
venv
configs
units
next_steps
