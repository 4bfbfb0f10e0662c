#!/usr/bin/env python3
"""A CIRIS emergency-shutdown client, written from the CIRIS endpoint
document alone: its request format and its signing recipe

    sign_data = {command_id, command_type, wa_id, issued_at.isoformat(),
                 reason, target_agent_id}
    message = json.dumps(sign_data, sort_keys=True).encode()
    signature = private_key.sign(message)

with keys and signatures as base64 of their raw bytes. It knows nothing of
vigil. Each CASE builds one kind of request (a good one, or one that is
wrong in one way), posts it, and prints one JSON line:

    {"answers": [{"status": <HTTP status>, "body": <JSON body>}, ...]}

(two answers for `replay`, which posts the same command twice).

Usage: ciris_client.py URL KEY_FILE WA_ID CASE [--target AGENT_ID]
KEY_FILE holds base64 of a 32-byte Ed25519 private key (seed).
Needs the `cryptography` package.
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CASES = [
    "valid",
    "valid_z",
    "replay",
    "malformed",
    "missing_fields",
    "unknown_field",
    "bad_value",
    "wrong_type",
    "naive_time",
    "stale",
    "future",
    "bad_signature",
    "bad_signature_unknown_key",
    "unknown_key",
    "test",
]


def b64(raw):
    return base64.b64encode(raw).decode()


def public_b64(private_key):
    return b64(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def signed_command(
    private_key,
    wa_id,
    target_agent_id,
    command_type="SHUTDOWN_NOW",
    issued_at=None,
    reason="Emergency maintenance required",
):
    """The document's request, signed by the document's recipe."""
    if issued_at is None:
        issued_at = datetime.now(timezone.utc)
    command_id = f"cmd_{uuid.uuid4().hex}"
    sign_data = {
        "command_id": command_id,
        "command_type": command_type,
        "wa_id": wa_id,
        "issued_at": issued_at.isoformat(),
        "reason": reason,
        "target_agent_id": target_agent_id,
    }
    message = json.dumps(sign_data, sort_keys=True).encode()
    signature = private_key.sign(message)
    return {
        "command_id": command_id,
        "command_type": command_type,
        "wa_id": wa_id,
        "wa_public_key": public_b64(private_key),
        "issued_at": issued_at.isoformat(),
        "expires_at": None,
        "reason": reason,
        "target_agent_id": target_agent_id,
        "target_tree_path": None,
        "signature": b64(signature),
        "parent_command_id": None,
        "relay_chain": [],
    }


def request(url, data=None):
    """GET (no data) or POST JSON; returns {"status", "body"}."""
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return {"status": status, "body": body}


def post(base, payload):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(base + "/emergency/shutdown", data)


def run(base, key, wa_id, case, target):
    if case == "test":
        return [request(base + "/emergency/test")]
    if case == "valid":
        return [post(base, signed_command(key, wa_id, target))]
    if case == "valid_z":
        # The document's example writes issued_at with a "Z"; the signature
        # is still over isoformat() of the same instant ("+00:00").
        issued = datetime.now(timezone.utc)
        cmd = signed_command(key, wa_id, target, issued_at=issued)
        cmd["issued_at"] = issued.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return [post(base, cmd)]
    if case == "replay":
        cmd = signed_command(key, wa_id, target)
        return [post(base, cmd), post(base, cmd)]
    if case == "malformed":
        return [post(base, b'{"command_id": "cmd_1", "command_type": ')]
    if case == "missing_fields":
        return [post(base, {"command_id": "cmd_1", "command_type": "SHUTDOWN_NOW"})]
    if case == "unknown_field":
        cmd = signed_command(key, wa_id, target)
        cmd["shutdown_everything"] = True
        return [post(base, cmd)]
    if case == "bad_value":
        cmd = signed_command(key, wa_id, target)
        cmd["relay_chain"] = "not a list"
        return [post(base, cmd)]
    if case == "wrong_type":
        return [post(base, signed_command(key, wa_id, target, command_type="RUN"))]
    if case == "naive_time":
        naive = datetime.now(timezone.utc).replace(tzinfo=None)
        return [post(base, signed_command(key, wa_id, target, issued_at=naive))]
    if case == "stale":
        old = datetime.now(timezone.utc) - timedelta(minutes=10)
        return [post(base, signed_command(key, wa_id, target, issued_at=old))]
    if case == "future":
        ahead = datetime.now(timezone.utc) + timedelta(minutes=3)
        return [post(base, signed_command(key, wa_id, target, issued_at=ahead))]
    if case == "bad_signature":
        cmd = signed_command(key, wa_id, target)
        cmd["reason"] = "something else than what was signed"
        return [post(base, cmd)]
    if case == "bad_signature_unknown_key":
        stranger = Ed25519PrivateKey.generate()
        cmd = signed_command(stranger, wa_id, target)
        cmd["reason"] = "something else than what was signed"
        return [post(base, cmd)]
    if case == "unknown_key":
        stranger = Ed25519PrivateKey.generate()
        return [post(base, signed_command(stranger, wa_id, target))]
    raise SystemExit(f"unknown case {case!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("key_file", help="base64 of a 32-byte Ed25519 seed")
    parser.add_argument("wa_id")
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--target", default=None, help="target_agent_id")
    args = parser.parse_args()
    with open(args.key_file, "rb") as f:
        seed = base64.b64decode(f.read().strip())
    key = Ed25519PrivateKey.from_private_bytes(seed)
    answers = run(args.url.rstrip("/"), key, args.wa_id, args.case, args.target)
    json.dump({"answers": answers}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
