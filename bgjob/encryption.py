"""Optional encryption of job bodies at rest: AES-256-GCM (the `cryptography` package), keys from
`Settings.encryption_keys`.

A body is stored as `nonce (12 random bytes) + ciphertext + tag (16 bytes)`: 28 bytes more than the plaintext.
The header `Bgjob-Encryption: aes256gcm;<key id>[;id]` names the scheme and the key (the first 8 hex digits of
the key's sha256, never the key), and `;id` says the ciphertext is bound to the job's `Bgjob-Id` header
(associated data), so a body moved onto another job does not decrypt. `Content-Type` stays the plaintext's.
The first key encrypts, any listed key decrypts (rotation). Signing covers the stored (encrypted) bytes: a
worker verifies, then decrypts.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import job as jobmod
from .errors import ConfigurationError
from .headers import ENCRYPTION, HEADER_ID

if TYPE_CHECKING:  # an optional dependency (the encryption extra), imported when keys are configured
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEME = "aes256gcm"
NONCE_BYTES = 12
TAG_BYTES = 16
#: bytes an encrypted body has beyond its plaintext (nonce + tag).
OVERHEAD = NONCE_BYTES + TAG_BYTES
KEY_BYTES = 32
_BOUND = "id"


class DecryptError(jobmod.DecodeError):
    """An encrypted body cannot be decrypted here: unknown key, no keys, unknown scheme, or it was tampered with.
    A `DecodeError`, so every path that handles an undecodable body handles it (the worker dead-letters it with
    the reason "decrypt")."""

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        #: the key id the header names (None when the header does not parse).
        self.key_id = key_id


def _aesgcm() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise ConfigurationError('Settings.encryption_keys needs the cryptography package: '
                                 'pip install "bgjob[encryption]"') from exc  # fmt: skip
    return AESGCM


def generate_key() -> str:
    """A new random AES-256 key for `Settings.encryption_keys`: base64 (URL-safe alphabet) of 32 bytes, as str."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    """The id of a raw 32-byte key as written in the header: the first 8 hex digits of its sha256."""
    return hashlib.sha256(key).hexdigest()[:8]


def _decode_key(text: str, position: int) -> bytes:
    """A key's 32 bytes; raises ConfigurationError naming its position (never the key)."""
    what = f"encryption_keys[{position}]"
    try:
        raw = base64.b64decode(text.strip().translate(str.maketrans("-_", "+/")).encode(), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ConfigurationError(f"{what} is not base64 (make one with bgjob.encryption.generate_key())") from None
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(f"{what} decodes to {len(raw)} bytes; AES-256 needs {KEY_BYTES} "
                                 "(make one with bgjob.encryption.generate_key())")  # fmt: skip
    return raw


def parse_header(headers: Mapping[str, str] | None) -> tuple[str, str, bool] | None:
    """(scheme, key id, bound to the job id) from a message's Bgjob-Encryption header; None when it has none.
    Raises DecryptError when the header is there but does not parse."""
    value = (headers or {}).get(ENCRYPTION)
    if value is None:
        return None
    parts = value.split(";")
    if len(parts) not in (2, 3) or not parts[1] or (len(parts) == 3 and parts[2] != _BOUND):
        raise DecryptError(f"header {ENCRYPTION} {value[:64]!r} is not '<scheme>;<key id>[;id]'")
    return parts[0], parts[1], len(parts) == 3


def _associated_data(headers: Mapping[str, str], bound: bool) -> bytes | None:
    return b"bgjob-id:" + headers.get(HEADER_ID, "").encode() if bound else None


class Cipher:
    """Encrypts with the first of `keys`, decrypts with whichever key a message's header names.

    `keys`: base64 of 32 bytes each (`generate_key()`), at least one. Raises ConfigurationError for a key that
    does not decode to 32 bytes (naming its position) or when the cryptography package is missing.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigurationError("encryption needs at least one key in Settings.encryption_keys")
        raws = [_decode_key(k, i) for i, k in enumerate(keys)]
        aesgcm = _aesgcm()
        self._by_id: dict[str, list[AESGCM]] = {}
        for raw in raws:
            self._by_id.setdefault(key_id(raw), []).append(aesgcm(raw))
        #: the id of the key that encrypts (the first).
        self.key_id = key_id(raws[0])
        self._encryptor = aesgcm(raws[0])
        #: the ids of every key that decrypts, in the settings' order.
        self.key_ids = tuple(dict.fromkeys(key_id(r) for r in raws))

    def encrypt(self, body: bytes, headers: dict[str, str]) -> bytes:
        """The stored form of `body` (nonce + ciphertext + tag, OVERHEAD bytes longer); sets the Bgjob-Encryption
        header in `headers`, binding the ciphertext to their Bgjob-Id when they have one. Call it after every
        other header is set and before signing."""
        bound = HEADER_ID in headers
        nonce = os.urandom(NONCE_BYTES)
        headers[ENCRYPTION] = f"{SCHEME};{self.key_id}" + (f";{_BOUND}" if bound else "")
        return nonce + self._encryptor.encrypt(nonce, body, _associated_data(headers, bound))

    def decrypt(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        """The plaintext of a body `encrypt` made (`headers` the message's). A body without the header is
        returned as it is. Raises DecryptError: unknown scheme, no key with the header's id, or a body that
        does not authenticate (tampered with, cut, or moved to another job)."""
        from cryptography.exceptions import InvalidTag

        parsed = parse_header(headers)
        if parsed is None:
            return body
        scheme, kid, bound = parsed
        if scheme != SCHEME:
            raise DecryptError(f"unknown encryption scheme {scheme[:32]!r} (this bgjob knows {SCHEME})", kid)
        keys = self._by_id.get(kid)
        if not keys:
            raise DecryptError(f"the body is encrypted with key {kid}, which is not in this process's "
                               f"encryption_keys (ids {', '.join(self.key_ids)})", kid)  # fmt: skip
        if len(body) < OVERHEAD:
            raise DecryptError(f"the encrypted body is {len(body)} bytes, shorter than nonce and tag ({OVERHEAD})", kid)
        nonce, sealed = body[:NONCE_BYTES], body[NONCE_BYTES:]
        for key in keys:
            try:
                return key.decrypt(nonce, sealed, _associated_data(headers, bound))
            except InvalidTag:
                continue
        raise DecryptError(f"the body encrypted with key {kid} does not authenticate (tampered with, or moved "
                           "from another job)", kid)  # fmt: skip


@functools.lru_cache(maxsize=8)
def cipher_for(keys: tuple[str, ...]) -> Cipher | None:
    """The Cipher of `Settings.encryption_keys` (a tuple of base64 keys), made once per process; None for ().
    Raises ConfigurationError (see Cipher)."""
    return Cipher(keys) if keys else None


def decrypt_body(body: bytes, headers: Mapping[str, str], cipher: Cipher | None, *, who: str = "worker") -> bytes:
    """`body` decrypted when its headers say it is encrypted, else as it is. Raises DecryptError when it is
    encrypted and `cipher` is None (the message says this `who` has no encryption_keys) or cannot decrypt it."""
    parsed = parse_header(headers)
    if parsed is None:
        return body
    if cipher is None:
        raise DecryptError(f"the body is encrypted ({parsed[0]}, key {parsed[1]}) but this {who} has no "
                           "encryption_keys", parsed[1])  # fmt: skip
    return cipher.decrypt(body, headers)


def placeholder(exc: DecryptError, cipher: Cipher | None) -> str:
    """What a display shows for a body it cannot decrypt: `<encrypted; this client has no key <id>>`, or, when
    the client has that key, that the body does not authenticate (it was tampered with)."""
    if exc.key_id is None or cipher is None or exc.key_id not in cipher.key_ids:
        return f"<encrypted; this client has no key {exc.key_id or '?'}>"
    return f"<encrypted with key {exc.key_id}; the body does not authenticate (tampered with)>"
