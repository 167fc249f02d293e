"""Content addresses: particle id rules, name hashing, axons and the zero particle (⊥)."""
from __future__ import annotations

import hashlib
import re

import blake3

HASHES = ("sha256", "blake3")
ZERO = "0" * 64  # ⊥: the default semcon, the all-zero particle

# A 32-byte digest as 64 lowercase hex chars, or an external id kept verbatim: an IPFS
# CIDv0 (base58btc "Qm" + 44 chars) or a sha2-256 CIDv1 in base32 ("b" + 58 chars). No
# valid CID is 64 chars long, which lets SQL tell hex ids apart by length alone.
HEX_RE = r"^[0-9a-f]{64}$"
CID_RE = r"^(Qm[1-9A-HJ-NP-Za-km-z]{44}|b[a-z2-7]{58})$"
PARTICLE_RE = f"{HEX_RE}|{CID_RE}"
PARTICLE_EXPECTED = "64 lowercase hex chars (a 32-byte digest) or an IPFS CID (Qm…/b…)"
_PARTICLE = re.compile(PARTICLE_RE)


def is_particle(value: object) -> bool:
    """True when `value` is a valid particle id string."""
    return isinstance(value, str) and _PARTICLE.fullmatch(value) is not None  # "$" allows "\n"


def digest(data: bytes, hash_name: str = "sha256") -> str:
    """Hex digest of `data` with the store's declared hash."""
    if hash_name == "sha256":
        return hashlib.sha256(data).hexdigest()
    if hash_name == "blake3":
        return blake3.blake3(data).hexdigest()
    raise ValueError(f"unknown hash {hash_name!r}; expected one of {HASHES}")


def particle_of_text(text: str, hash_name: str = "sha256") -> str:
    """The particle id of a piece of text (a name): the digest of its UTF-8 bytes."""
    return digest(text.encode("utf-8"), hash_name)


def particle_bytes(particle: str) -> bytes:
    """Bytes a particle contributes to an axon: the raw digest for hex ids, else UTF-8."""
    if len(particle) == 64 and re.fullmatch(HEX_RE, particle):
        return bytes.fromhex(particle)
    return particle.encode("utf-8")


def axon(src: str, dst: str, hash_name: str = "sha256") -> str:
    """axon(p, q) = H(p ‖ q): the particle that names the link p → q, so links can be typed."""
    return digest(particle_bytes(src) + particle_bytes(dst), hash_name)
