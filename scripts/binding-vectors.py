#!/usr/bin/env python3
"""Writes tests/data/binding_vectors.json: the bytes a bound announce and a signed set-up message
sign, and their ed25519 signatures, computed here from the layout in the crate docs with Python's
own SHA-256 and ed25519 (the `cryptography` package), so that they check the crate's code from
outside. tests/binding.rs compares the crate's bytes and signatures with them."""
import hashlib
import json
import pathlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def key(seed: bytes):
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return private, private.public_key().public_bytes(*RAW)


def bound(seed: bytes, challenge: bytes, server_id: str, node_info: str, flags: int) -> dict:
    private, public = key(seed)
    sid = server_id.encode()
    data = (b"peer-signal bound-announce v1\x00" + bytes([len(sid)]) + sid + challenge + public
            + hashlib.sha256(node_info.encode()).digest() + bytes([flags]))
    return {"key_seed": seed.hex(), "public_key": public.hex(), "challenge": challenge.hex(),
            "server_id": server_id, "node_info": node_info, "flags": flags,
            "bytes": data.hex(), "signature": private.sign(data).hex()}


KINDS = {"Init": 0, "Offer": 1, "Answer": 2, "IceCandidate": 3}


def setup(seed: bytes, other: bytes, from_init: bool, seq: int, kind: str, text: str) -> dict:
    private, public = key(seed)
    id_init, id_follow = (public, other) if from_init else (other, public)
    body = text.encode()
    data = (b"peer-signal signed-setup v1\x00" + id_init + id_follow + bytes([0 if from_init else 1])
            + seq.to_bytes(8, "big") + bytes([KINDS[kind]]) + len(body).to_bytes(4, "big") + body)
    return {"key_seed": seed.hex(), "id_init": id_init.hex(), "id_follow": id_follow.hex(),
            "from_init": from_init, "seq": seq, "kind": kind, "text": text,
            "bytes": data.hex(), "signature": private.sign(data).hex()}


vectors = {
    "bound_announce": [
        bound(bytes([1] * 32), bytes(range(32)), "wss://signal.example.org",
              '{"name":"alice","client":"peer-signal","pubkey":"x","modules":0}', 1),
        bound(bytes([2] * 32), bytes([0xff] * 32), "ws://127.0.0.1:8765", "{}", 0),
        bound(bytes([3] * 32), bytes([7] * 32), "node:" + "ab" * 32, '{"name":"ünïcode"}', 1),
    ],
    "signed_setup": [
        setup(bytes([1] * 32), bytes([9] * 32), True, 1_765_000_000_000_000, "Init", ""),
        setup(bytes([2] * 32), bytes([9] * 32), False, 2, "Offer", "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"),
        setup(bytes([3] * 32), bytes([8] * 32), True, 2**64 - 1, "IceCandidate", "candidate:1 1 UDP 1 127.0.0.1 9 typ host"),
    ],
}
path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "binding_vectors.json"
path.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {path}")
