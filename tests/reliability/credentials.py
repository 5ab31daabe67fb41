"""Credentials made on the spot for the security scenarios: a TLS CA and server certificate (openssl CLI),
nkeys, and operator-mode JWTs with a creds file (nkeys + the JWT format nats-server checks).

nkeys (what nats-py needs for nkey and creds logins) is imported where used: without it only those
two modes are skipped."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> Pki | None:
    """A CA and a server certificate for 127.0.0.1 signed by it; None without the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    # What Python's strict X.509 verification (3.13+) wants of a leaf: SAN, key ids, key usages.
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=bgjob test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for args in run:
        subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=60)
    return Pki(ca=ca, cert=cert, key=key)


def new_nkey(role: str) -> tuple[str, Any]:
    """A fresh (seed, nkeys.KeyPair) of the given role: "user", "account" or "operator"."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), getattr(nkeys, f"PREFIX_BYTE_{role.upper()}"))
    return seed.decode(), nkeys.from_seed(bytearray(seed))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt(issuer: Any, subject: str, name: str, claims: dict) -> str:
    body = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name, "sub": subject, "nats": claims}
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()).decode()
    signed = f"{_b64(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
              "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}  # fmt: skip


@dataclass(frozen=True)
class OperatorMode:
    #: nats-server config lines: trusted operator, system account, memory resolver with the accounts.
    config: str
    #: the application account's nkeys.KeyPair: it signs user JWTs.
    account: Any


def operator_mode() -> OperatorMode:
    """An operator, a system account and an application account with JetStream enabled."""
    _, operator = new_nkey("operator")
    _, system = new_nkey("account")
    _, account = new_nkey("account")
    operator_jwt = _jwt(operator, operator.public_key.decode(), "bgjob-op", {"type": "operator", "version": 2})
    system_jwt = _jwt(operator, system.public_key.decode(), "SYS", {"type": "account", "version": 2})
    claims = {"type": "account", "version": 2, "limits": _UNLIMITED, "default_permissions": {"pub": {}, "sub": {}}}
    account_jwt = _jwt(operator, account.public_key.decode(), "app", claims)
    config = (
        f'operator: "{operator_jwt}"\nsystem_account: {system.public_key.decode()}\nresolver: MEMORY\n'
        f'resolver_preload: {{ {account.public_key.decode()}: "{account_jwt}", '
        f'{system.public_key.decode()}: "{system_jwt}" }}\n'
    )
    return OperatorMode(config=config, account=account)


def write_creds(path: Path, account: Any) -> Path:
    """A creds file (user JWT signed by `account`, plus the user's seed), as `nsc` would write it."""
    seed, user = new_nkey("user")
    claims = {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    token = _jwt(account, user.public_key.decode(), "bgjob-user", claims)
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    path.chmod(0o600)
    return path
