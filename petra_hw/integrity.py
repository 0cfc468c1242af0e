"""The digest that seals an artifact's manifest: sha256, or HMAC-SHA256 with a deployment's key.

The manifest lists and hashes every file of the artifact; this seal covers the manifest itself, so
a swapped model file cannot be hidden by editing the manifest.  The seal is computed over the
manifest's canonical JSON (sorted keys, no whitespace) and stored beside it in ``manifest.digest``
as ``sha256:<hex>`` or ``hmac-sha256:<hex>``.  A plain sha256 catches corruption and careless
edits; when ``PETRA_HW_SIGNING_KEY`` is set, artifacts are sealed with an HMAC under that key and
loading refuses every artifact that is not sealed with it, so a deployment rejects artifacts it
did not build.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from petra_hw.errors import ArtifactError

SIGNING_KEY_ENV = "PETRA_HW_SIGNING_KEY"
SHA256, HMAC = "sha256", "hmac-sha256"


def canonical_json(manifest: dict[str, Any]) -> bytes:
    """The manifest's one byte form that its seal covers."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _key() -> bytes | None:
    key = os.environ.get(SIGNING_KEY_ENV, "")
    return key.encode() if key else None


def seal(manifest: dict[str, Any]) -> str:
    """The text of ``manifest.digest``: an HMAC under the signing key when one is set."""
    key, body = _key(), canonical_json(manifest)
    if key is not None:
        return f"{HMAC}:{hmac.new(key, body, hashlib.sha256).hexdigest()}"
    return f"{SHA256}:{hashlib.sha256(body).hexdigest()}"


def verify(manifest: dict[str, Any], sealed: str, where: str) -> None:
    """Refuse a manifest whose seal does not match (or, with a signing key, is not an HMAC)."""
    kind, _, digest = sealed.strip().partition(":")
    key = _key()
    if kind not in (SHA256, HMAC) or not digest:
        raise ArtifactError(f"{where}: manifest.digest is malformed (expected sha256:<hex>)")
    if key is not None and kind != HMAC:
        raise ArtifactError(
            f"{where}: not signed with {SIGNING_KEY_ENV} (sealed with a plain sha256); refused"
        )
    if key is None and kind == HMAC:
        raise ArtifactError(
            f"{where}: the manifest is signed (HMAC); set {SIGNING_KEY_ENV} to verify it"
        )
    if not hmac.compare_digest(seal(manifest).partition(":")[2], digest):
        what = "signature" if kind == HMAC else "digest"
        raise ArtifactError(f"{where}: manifest.json does not match its {what} (tampered?)")
