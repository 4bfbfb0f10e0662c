#!/usr/bin/env python3
"""Signs tricky CIRIS commands the way the CIRIS emergency-shutdown document
says, and writes them to ciris_fixtures.json for vigil-command's tests.

    pip install cryptography
    python3 crates/vigil-command/tests/data/make_fixtures.py

The recipe is the document's, literally:

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

plus the fields the design brief adds: expires_at when set, target_tree_path
when a non-empty list, and vigil's command and args when present. Each body
is first parsed with json.loads, as a server would, and the timestamps with
datetime.fromisoformat, so the signed values are what Python reads from the
exact text stored in the fixture.

The private key comes from a fixed seed and Ed25519 signatures are
deterministic, so running this again writes the same file.
"""

import base64
import hashlib
import json
import os
import random
import struct
import sys
from datetime import datetime

import cryptography
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SEED = hashlib.sha256(b"vigil CIRIS fixture key").digest()
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
PUBLIC_B64 = base64.b64encode(PUBLIC).decode()
PUBLIC_URLSAFE_NOPAD = base64.urlsafe_b64encode(PUBLIC).decode().rstrip("=")

TRICKY = (
    "Arr\u00eat d'urgence \u2014 \u7dca\u6025\u505c\u6b62 \U0001f6a8 \U00010000 "
    "nl\n cr\r tab\t bs\b ff\f nul\x00 us\x1f del\x7f nbsp\u00a0 ls\u2028 "
    "bom\ufeff quote\" backslash\\ slash/ </script>"
)


def random_floats(n):
    """Doubles from random bit patterns (all exponents), plus decimal-looking
    values; both stress shortest-repr printing."""
    rng = random.Random(20250101)
    out = []
    while len(out) < n:
        (x,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if x == x and x not in (float("inf"), float("-inf")):
            out.append(x)
        out.append(round(rng.uniform(-1000, 1000), rng.randint(0, 8)))
        out.append(rng.randint(1, 99) * 10.0 ** rng.randint(-12, 25))
    return out[:n]


# Each case: the command's fields (without key and signature), and optionally
# the raw JSON text of `args` (to keep literals such as 1e2 as written) and
# whether the body is written with raw UTF-8 instead of \u escapes.
CASES = [
    {
        "name": "seed_example_z",
        "fields": {
            "command_id": "cmd_unique_id",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00Z",
            "expires_at": None,
            "reason": "Emergency maintenance required",
            "target_agent_id": None,
            "target_tree_path": None,
            "parent_command_id": None,
            "relay_chain": [],
        },
    },
    {
        "name": "plus_zero_offset_with_micros",
        "fields": {
            "command_id": "cmd_2",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00.123456+00:00",
            "reason": "micros",
            "target_agent_id": "agent-7",
        },
    },
    {
        "name": "india_offset_three_digit_fraction_and_long_expiry_fraction",
        "fields": {
            "command_id": "cmd_3",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T17:30:00.123+05:30",
            "expires_at": "2025-01-01T09:04:00.1234567-03:00",
            "reason": "offsets",
            "target_agent_id": "agent-7",
        },
    },
    {
        "name": "minus_zero_offset_zero_fraction",
        "fields": {
            "command_id": "cmd_4",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00.000000-00:00",
            "expires_at": "2025-01-01T12:03:00.5Z",
            "reason": "zero fraction is not printed",
            "target_agent_id": None,
        },
    },
    {
        "name": "tricky_reason_raw_utf8_body",
        "raw_utf8": True,
        "fields": {
            "command_id": "cmd_\u00e9_\U0001f680",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_\u00fcber",
            "issued_at": "2025-01-01T12:00:00Z",
            "reason": TRICKY,
            "target_agent_id": "agent/\u00e9",
        },
    },
    {
        "name": "tricky_reason_escaped_body",
        "fields": {
            "command_id": "cmd_6",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00Z",
            "reason": TRICKY,
            "target_agent_id": None,
        },
    },
    {
        "name": "tree_path_and_urlsafe_key",
        "key": PUBLIC_URLSAFE_NOPAD,
        "fields": {
            "command_id": "cmd_7",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00.5+01:00",
            "expires_at": "2025-01-01T11:04:00Z",
            "reason": "tree",
            "target_agent_id": None,
            "target_tree_path": ["root", "r\u00e9gion", "\U0001f333", "a/b"],
        },
    },
    {
        "name": "empty_tree_path_is_not_signed",
        "fields": {
            "command_id": "cmd_8",
            "command_type": "SHUTDOWN_NOW",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00Z",
            "reason": "empty path",
            "target_agent_id": None,
            "target_tree_path": [],
            "parent_command_id": "cmd_1",
            "relay_chain": ["relay-a", "relay-b"],
        },
    },
    {
        "name": "general_command_nested_args",
        "fields": {
            "command_id": "cmd_9",
            "command_type": "EXEC",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00Z",
            "reason": "general",
            "target_agent_id": "agent-7",
            "command": "shutdown",
        },
        "args_text": (
            '{"delay": 5, "b": {"z": [1.0, 1e16, 1.5e-05, 0.1, 1e2, 1E-7, -0.0, 2.5e+300],'
            ' "a": null, "B": true, "\u00e9": false, "\\ud800\\udc00": "astral key",'
            ' "\\uffff": "bmp key", "": "empty key"}, "a": [], "A": {},'
            ' "ints": [0, -1, 9007199254740993, 18446744073709551615, -9223372036854775808],'
            ' "s": "line\\nbreak \\u00e9 \\ud83d\\ude80 /", "dup": 1, "dup": 2}'
        ),
    },
    {
        "name": "random_floats",
        "fields": {
            "command_id": "cmd_10",
            "command_type": "EXEC",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00Z",
            "reason": "floats",
            "target_agent_id": None,
            "command": "floats",
        },
        "args_text": json.dumps(random_floats(400)),
    },
    {
        "name": "string_args",
        "fields": {
            "command_id": "cmd_11",
            "command_type": "EXEC",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00Z",
            "reason": "string args",
            "target_agent_id": None,
            "command": "echo",
        },
        "args_text": '"hello \\u00e9"',
    },
    {
        "name": "command_without_args",
        "fields": {
            "command_id": "cmd_12",
            "command_type": "EXEC",
            "wa_id": "wa_authority_001",
            "issued_at": "2025-01-01T12:00:00Z",
            "reason": "no args",
            "target_agent_id": None,
            "command": "noop",
            "args": None,
        },
    },
]


def sign_data_of(cmd):
    """The signed subset, as the CIRIS document builds it, with the brief's
    optional fields."""
    issued_at = datetime.fromisoformat(cmd["issued_at"])
    sign_data = {
        "command_id": cmd["command_id"],
        "command_type": cmd["command_type"],
        "wa_id": cmd["wa_id"],
        "issued_at": issued_at.isoformat(),
        "reason": cmd["reason"],
        "target_agent_id": cmd.get("target_agent_id"),
    }
    if cmd.get("expires_at") is not None:
        sign_data["expires_at"] = datetime.fromisoformat(cmd["expires_at"]).isoformat()
    if cmd.get("target_tree_path"):
        sign_data["target_tree_path"] = cmd["target_tree_path"]
    if cmd.get("command") is not None:
        sign_data["command"] = cmd["command"]
    if cmd.get("args") is not None:
        sign_data["args"] = cmd["args"]
    return sign_data


def body_text(case, signature_b64):
    fields = dict(case["fields"])
    fields["wa_public_key"] = case.get("key", PUBLIC_B64)
    fields["signature"] = signature_b64
    text = json.dumps(fields, ensure_ascii=not case.get("raw_utf8", False))
    if "args_text" in case:
        text = text[:-1] + ', "args": ' + case["args_text"] + "}"
    return text


def make_case(case):
    # Parse the body as a server would (the signature is not signed, so a
    # placeholder gives the same parsed values).
    parsed = json.loads(body_text(case, ""))
    message = json.dumps(sign_data_of(parsed), sort_keys=True).encode()
    signature = base64.b64encode(KEY.sign(message)).decode()
    KEY.public_key().verify(base64.b64decode(signature), message)
    return {
        "name": case["name"],
        "body": body_text(case, signature),
        "signing_bytes_hex": message.hex(),
        "signing_text": message.decode("ascii"),
        "issued_at_isoformat": datetime.fromisoformat(parsed["issued_at"]).isoformat(),
    }


def main():
    out = {
        "about": "Written by make_fixtures.py; do not edit by hand.",
        "python": sys.version.split()[0],
        "cryptography": cryptography.__version__,
        "private_key_seed_hex": SEED.hex(),
        "public_key": PUBLIC_B64,
        "cases": [make_case(c) for c in CASES],
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ciris_fixtures.json")
    with open(path, "w", encoding="ascii") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {len(out['cases'])} cases to {path}")


if __name__ == "__main__":
    main()
