"""The update manifest and its Ed25519 signature over a canonical encoding."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.system import CLOCK_SANE_AFTER

if TYPE_CHECKING:  # cryptography costs about 8 MB of RSS: loaded when a manifest or key is handled, not at start
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
#: The largest chunk of a model sent over MQTT.
MAX_CHUNK = 1 << 20


class ManifestError(ValueError):
    """The manifest is refused; the message says why."""


class ExpectedDetection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str = Field(max_length=128)
    box_norm: tuple[float, float, float, float] | None = None
    min_score: float = Field(0.5, ge=0, le=1)


class ExpectedClass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str = Field(max_length=128)
    min_score: float = Field(0.5, ge=0, le=1)


class AcceptanceTest(BaseModel):
    """An image the new model must get right before it may serve."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    image: str = Field(max_length=4_000_000, description="Base64 of a JPEG or PNG.")
    detections: list[ExpectedDetection] = Field(default_factory=list, max_length=100)
    classes: list[ExpectedClass] = Field(default_factory=list, max_length=100)
    nothing: bool = Field(False, description="Expect no detection and no class at all.")
    iou: float = Field(0.5, gt=0, le=1, description="Overlap a detection needs with box_norm.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Model name reported in predictions.")
    version: int = Field(ge=1, le=2**53, description="Monotonic: only versions above the highest accepted install.")
    sha256: str = Field(description="Digest of the model file, lower-case hex.")
    size: int = Field(gt=0, le=2**34, description="Exact size of the model file in bytes.")
    urls: list[str] = Field(default_factory=list, max_length=8, description="HTTP(S) sources, tried in order.")
    delivery: Literal["http", "mqtt"] = "http"
    chunk_size: int = Field(65536, ge=1024, le=MAX_CHUNK, description="Bytes per chunk with MQTT delivery.")
    labels: list[str] | None = Field(None, max_length=100_000)
    task: Literal["auto", "classification", "detection", "raw"] | None = None
    score_threshold: float | None = Field(None, ge=0, le=1)
    resize: Literal["auto", "stretch", "letterbox"] | None = None
    mean: list[float] | None = Field(None, min_length=1, max_length=4)
    std: list[float] | None = Field(None, min_length=1, max_length=4)
    tests: list[AcceptanceTest] = Field(default_factory=list, max_length=16)
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Agreement with the serving model this one needs during probation, in place of the "
        "device's ota.min_agreement. Below that it needs acceptance tests: a model meant to differ (new "
        "classes, another detector) is then proven by its tests instead.",
    )
    expires: dt.datetime = Field(description="UTC time after which the manifest is refused.")
    signature: str | None = Field(None, description="Base64 Ed25519 signature of the canonical manifest.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-128 of A-Z a-z 0-9 _ . -")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("must be 64 lower-case hex digits")
        return v

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            if not re.match(r"^https?://[^\s/$.?#][^\s]*$", u):
                raise ValueError(f"not an http(s) URL: {u[:100]}")
        return v

    @field_validator("expires")
    @classmethod
    def _utc(cls, v: dt.datetime) -> dt.datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a time zone (UTC)")
        return v

    def canonical(self) -> bytes:
        """What is signed: every field but the signature, sorted keys, no spaces, UTF-8.

        Fields at their default are left out, so a field added later (with a default) does not
        invalidate signatures made before it existed.
        """
        doc = self.model_dump(mode="json", exclude={"signature"}, exclude_defaults=True)
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def signed(self, key: Ed25519PrivateKey) -> Manifest:
        sig = base64.b64encode(key.sign(self.canonical())).decode()
        return self.model_copy(update={"signature": sig})


def parse_manifest(doc: Any) -> Manifest:
    try:
        return Manifest.model_validate(doc)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(f"invalid manifest: {loc}: {first['msg']}") from None


def verify_signature(m: Manifest, keys: list[Ed25519PublicKey]) -> None:
    from cryptography.exceptions import InvalidSignature

    if m.signature is None:
        raise ManifestError("manifest is not signed")
    try:
        sig = base64.b64decode(m.signature, validate=True)
    except ValueError:
        raise ManifestError("signature is not base64") from None
    for k in keys:
        try:
            k.verify(sig, m.canonical())
            return
        except InvalidSignature:
            continue
    raise ManifestError("signature does not match any trusted key")


def check_expiry(m: Manifest, now: dt.datetime) -> str | None:
    """Raise if expired; return a note when the clock cannot be trusted to tell."""
    if now < CLOCK_SANE_AFTER:
        return f"device clock ({now.isoformat()}) not set; expiry not checked"
    if now > m.expires:
        raise ManifestError(f"manifest expired at {m.expires.isoformat()}")
    return None


def load_public_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = []
    for p in paths:
        k = serialization.load_pem_public_key(p.read_bytes())
        if not isinstance(k, Ed25519PublicKey):
            raise ManifestError(f"{p}: not an Ed25519 public key")
        keys.append(k)
    return keys


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(f"cannot read the key {path}: {err.strerror or err}") from None
    if b"PUBLIC KEY" in data:
        raise ManifestError(f"{path} is a public key: sign with the private key (the .key file `fleet keygen` made)")
    try:
        k = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ManifestError(f"{path} is not a PEM private key ({err})") from None
    if not isinstance(k, Ed25519PrivateKey):
        raise ManifestError(f"{path}: not an Ed25519 private key")
    return k


def write_keypair(directory: Path, name: str = "fleet") -> tuple[Path, Path]:
    """A new key pair: the private key readable by its owner only (0600)."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv, pub = directory / f"{name}.key", directory / f"{name}.pub"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub
