"""Optional ed25519 job signing: producers sign, workers refuse (dead-letter) what does not verify.

A signature covers the queue, the job's id, type, content type and body (format `bgjob-v1`); a placed or
partitioned job's signature also covers its `Bgjob-Target` and `Bgjob-Partition-Key` headers (format
`bgjob-v2`), so whoever can publish to the stream cannot re-route a signed job to another claim or key, nor add,
change or remove either header. Which format a job's signature has follows from the job: v2 when it carries
either header, else v1, so a job signed before v2 existed (it has neither) still verifies, and old workers still
verify new jobs that are neither placed nor partitioned.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence

from . import job as jobmod
from .errors import BgjobError
from .headers import PARTITION_KEY, SIGNATURE, TARGET

HEADER_SIGNATURE = SIGNATURE


def _nacl() -> object:
    try:
        import nacl.signing
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BgjobError('job signing needs PyNaCl: pip install "bgjob[signing]"') from exc
    return nacl.signing


def generate_keypair() -> tuple[str, str]:
    """A new (signing_key, verify_key) pair, base64-encoded, for Settings(signing_key=, verify_keys=)."""
    signing = _nacl().SigningKey.generate()  # type: ignore[attr-defined]  # nacl.signing, imported lazily (optional)
    return _b64(bytes(signing)), _b64(bytes(signing.verify_key))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _key(text: str, what: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.encode())
    except (ValueError, TypeError) as exc:
        raise BgjobError(f"{what} is not base64: {exc}") from exc
    if len(raw) != 32:
        raise BgjobError(f"{what} must be 32 bytes (base64 of an ed25519 key), got {len(raw)}")
    return raw


def _signed_bytes(queue: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """What a signature covers: queue, job id, type, content type and body; and for a job with a Bgjob-Target or
    Bgjob-Partition-Key header (v2), whether each is present and its value."""
    fields = [queue, headers.get(jobmod.HEADER_ID, ""), headers.get(jobmod.HEADER_TYPE, ""),
              headers.get(jobmod.CONTENT_TYPE, "")]  # fmt: skip
    if TARGET not in headers and PARTITION_KEY not in headers:
        return b"bgjob-v1\n" + "\n".join(fields).encode() + b"\n" + body
    # "-" for an absent header, "=" before a present one's value: an empty value is not an absent header. Claims
    # and partition keys are printable (no newline), so the lines cannot be shifted into one another.
    fields += [f"={headers[name]}" if name in headers else "-" for name in (TARGET, PARTITION_KEY)]
    return b"bgjob-v2\n" + "\n".join(fields).encode() + b"\n" + body


class Signer:
    """Signs outgoing jobs with one ed25519 key."""

    def __init__(self, signing_key: str) -> None:
        self._key = _nacl().SigningKey(_key(signing_key, "signing_key"))  # type: ignore[attr-defined]  # nacl.signing, imported lazily (optional)

    def sign(self, queue: str, headers: dict[str, str], body: bytes) -> None:
        headers.pop(HEADER_SIGNATURE, None)
        signature = self._key.sign(_signed_bytes(queue, headers, body)).signature
        headers[HEADER_SIGNATURE] = _b64(signature)


class Verifier:
    """Accepts jobs signed by any of the given keys (several, so keys can be rotated)."""

    def __init__(self, verify_keys: Sequence[str]) -> None:
        signing = _nacl()
        self._keys = [signing.VerifyKey(_key(k, "verify key")) for k in verify_keys]  # type: ignore[attr-defined]  # nacl.signing, imported lazily (optional)

    def check(self, queue: str, headers: Mapping[str, str], body: bytes) -> str | None:
        """None if a key verifies the job's signature, else why not."""
        from nacl.exceptions import BadSignatureError

        signature = headers.get(HEADER_SIGNATURE)
        if not signature:
            return "the job is not signed"
        try:
            raw = base64.urlsafe_b64decode(signature.encode())
        except (ValueError, TypeError):
            return "the signature is not base64"
        message = _signed_bytes(queue, headers, body)
        for key in self._keys:
            try:
                key.verify(message, raw)
                return None
            except (BadSignatureError, ValueError):
                continue
        return "the signature does not verify with any configured key (tampered, or signed by an unknown key)"


@functools.lru_cache(maxsize=4)
def signer_for(signing_key: str) -> Signer:
    """The Signer of `signing_key`, made once (a key is parsed once per process)."""
    return Signer(signing_key)
