"""A throwaway LAN CA and certificates, made with the openssl command as docs/security.md shows."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class PKI:
    ca: Path
    collector_cert: Path
    collector_key: Path
    agent_cert: Path
    agent_key: Path
    other_ca: Path  # a CA nobody trusts
    stranger_cert: Path  # a client certificate signed by other_ca
    stranger_key: Path


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    openssl("req", "-x509", *CURVE, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "30", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


def make_leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str,
              alt_names: str | None = None) -> tuple[Path, Path]:
    openssl("req", *CURVE, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=folder)
    extensions = ["basicConstraints=critical,CA:FALSE", f"extendedKeyUsage={usage}",
                  "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid,issuer"]
    if alt_names:
        extensions.append(f"subjectAltName={alt_names}")
    (folder / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca[0], "-CAkey", ca[1],
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "30",
            "-extfile", f"{name}.ext", cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


def make_pki(folder: Path) -> PKI:
    """A LAN CA, a collector certificate for 127.0.0.1, an agent client certificate,
    and a stranger: a client certificate from a CA the collector does not trust."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder, "lan-ca")
    collector = make_leaf(folder, "collector", ca, "serverAuth",
                          "IP:127.0.0.1,DNS:localhost")
    agent = make_leaf(folder, "pi-1", ca, "clientAuth")
    other = make_ca(folder, "other-ca")
    stranger = make_leaf(folder, "stranger", other, "clientAuth")
    return PKI(ca[0], *collector, *agent, other[0], *stranger)
