"""Secrets wakegate keeps, and the key that protects them outside Redis.

One secret key (a Fernet key in a file only its owner reads: `secret_key_file`) encrypts
deployments' `hfToken` before they reach Redis, and signs API-token records, so that neither a
copy of Redis or its append-only file reveals a Hub token nor a raw write into Redis makes a
working API token. The gateway seals, the scaler opens where it hands a token to a backend.

Files holding secrets are created private (directories 0700, files 0600) in one step: never
created readable and narrowed afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from wakegate.spec import DeploymentConfig

# Prefix of a sealed value in a stored deployment config: tells it from a token stored in
# clear by a gateway without a key (or before there were keys).
SEALED_PREFIX = "wgsealed:v1:"
SEALED_FIELDS = ("hf_token",)


class SecretKeyError(Exception):
    """The secret key is missing, unreadable, malformed, or not the one that sealed a value."""


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter: created 0700 (parents included), an
    existing one narrowed to it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: str) -> bool:
    """Create `path` with `data`, mode 0600 from the start; False (nothing written) when it
    exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    return True


def load_or_create(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in `path`, made (and written 0600) the first time."""
    write_private(path, make() + "\n")
    return path.read_text().strip()


def read_secret(path: Path | None) -> str:
    """A secret kept in a file (a token); "" for no file configured."""
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SecretKeyError(f"cannot read {path}: {exc}") from None


def generate_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts values for Redis and signs records with the installation's secret key."""

    def __init__(self, key: str | bytes) -> None:
        raw = key.encode() if isinstance(key, str) else key
        try:
            self._fernet = Fernet(raw.strip())
        except ValueError as exc:
            raise SecretKeyError(f"the secret key is not a valid key: {exc}") from None
        # A key of its own for signing, so that no signature is also a Fernet key's use.
        self._mac_key = hmac.new(raw.strip(), b"wakegate token records v1", hashlib.sha256).digest()

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise SecretKeyError(f"cannot read the secret key file {path}: {exc}") from None

    def seal(self, plain: str) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, value: str) -> str:
        """The plain text of a sealed value; a value stored in clear comes back as it is."""
        if not is_sealed(value):
            return value
        try:
            return self._fernet.decrypt(value[len(SEALED_PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret does not open with this secret key (another installation's "
                "key, or the key file was replaced)"
            ) from None

    def sign(self, message: str) -> str:
        return hmac.new(self._mac_key, message.encode(), hashlib.sha256).hexdigest()

    def verify(self, message: str, mac: str) -> bool:
        return hmac.compare_digest(self.sign(message), mac)


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


def box_from_settings(secret_key_file: Path | None) -> SecretBox | None:
    """The installation's box, or None where no key is configured (secrets then stay in clear,
    as before keys existed). A configured but unreadable key is an error, never None."""
    if secret_key_file is None:
        return None
    return SecretBox.from_file(secret_key_file)


def seal_secrets(
    config: DeploymentConfig, box: SecretBox | None, stored: DeploymentConfig | None = None
) -> DeploymentConfig:
    """`config` with its secrets sealed. A secret equal to the one already `stored` keeps the
    stored ciphertext, so an update that repeats it changes nothing (no rolling restart)."""
    sealed: dict[str, Any] = {}
    for name in SEALED_FIELDS:
        value = getattr(config, name)
        if box is None or not isinstance(value, str) or is_sealed(value):
            continue
        previous = getattr(stored, name) if stored is not None else None
        if is_sealed(previous) and box.open(str(previous)) == value:
            sealed[name] = str(previous)
        else:
            sealed[name] = box.seal(value)
    return replace(config, **sealed) if sealed else config


def open_secrets(config: DeploymentConfig, box: SecretBox | None) -> DeploymentConfig:
    """`config` with its secrets in clear, for the backend that launches a replica. Raises
    SecretKeyError when a secret is sealed and there is no key to open it: a replica must not
    start without the token it was given."""
    opened: dict[str, Any] = {}
    for name in SEALED_FIELDS:
        value = getattr(config, name)
        if not is_sealed(value):
            continue
        if box is None:
            raise SecretKeyError(
                f"{name} is stored encrypted and this process has no secret key: set "
                "WAKEGATE_SECRET_KEY_FILE to the key the gateways use"
            )
        opened[name] = box.open(str(value))
    return replace(config, **opened) if opened else config
