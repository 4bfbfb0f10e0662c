#!/usr/bin/env python3
"""A vigil client in Python over the WebSocket transport, with the
`websockets` package: pinned mutual TLS with a client certificate, the
`vigil.v1` subprotocol, one frame per text message.

    wss_client.py URL CLIENT_CRT CLIENT_KEY SERVER_CRT CASE

The server is pinned by its certificate (the bytes of SERVER_CRT), since
Python's ssl module has no key pinning of its own. Prints one JSON object.

Cases:
  frames      ping, sync, verify a module's bytes against their sum, run it
  binary      send a binary message: expect close 1003
  oversized   send a message past the limit: expect close 1009
  newline     send two frames in one message: expect close 1007
  subprotocol offer another subprotocol: expect HTTP 400
  path        ask for another path: expect HTTP 404
"""

import asyncio
import base64
import hashlib
import json
import ssl
import sys

import websockets


def context(crt, key, server_crt):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Pinned below, by the certificate's bytes; the name is not checked.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if crt:
        ctx.load_cert_chain(crt, key)
    with open(server_crt) as f:
        pinned = ssl.PEM_cert_to_DER_cert(f.read())
    return ctx, pinned


def check_pin(ws, pinned):
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    if der != pinned:
        raise SystemExit("the server's certificate is not the pinned one")


async def request(ws, api, kind, ref, payload):
    """Sends one frame and returns the payload of the answer with its REF
    (heartbeats and broadcasts in between are skipped)."""
    await ws.send(f"{api}:{kind}:{ref} {json.dumps(payload)}")
    while True:
        message = await ws.recv()
        if not isinstance(message, str) or "\n" in message:
            raise SystemExit(f"not one text frame: {message!r}")
        header, _, body = message.partition(" ")
        if header.split(":", 2)[2] == ref:
            return header, json.loads(body)


async def frames(ws):
    out = {}
    header, _ = await request(ws, "sys", "ping", "p1", {})
    out["ping"] = header
    header, body = await request(ws, "mod", "sync", "s1", {})
    out["modules"] = [m["mod"] for m in body["modules"]]
    header, body = await request(ws, "mod", "verify", "v1", {"mod": "hello.so"})
    content = base64.b64decode(body["content"])
    out["verified"] = hashlib.sha256(content).hexdigest() == body["sum"]
    header, body = await request(
        ws, "mod", "exec", "e1", {"mod": "hello.so", "args": "python", "sum": body["sum"]}
    )
    out["exec"] = header
    out["result"] = body.get("result")
    return out


async def closed_after(ws, message):
    await ws.send(message)
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed as closed:
        frame = closed.rcvd
        return {"close_code": frame.code if frame else None,
                "reason": frame.reason if frame else None}


async def main():
    url, crt, key, server_crt, case = sys.argv[1:6]
    ctx, pinned = context(crt if crt != "-" else None, key, server_crt)
    protocols = ["vigil.v1"]
    if case == "subprotocol":
        protocols = ["vigil.v2"]
    if case == "path":
        url = url.rsplit("/", 1)[0] + "/elsewhere"
    try:
        ws = await websockets.connect(
            url, ssl=ctx, subprotocols=protocols, max_size=64 * 1024 * 1024
        )
    except websockets.InvalidStatus as refused:
        print(json.dumps({"http_status": refused.response.status_code}))
        return
    except (OSError, websockets.WebSocketException, ssl.SSLError) as e:
        print(json.dumps({"refused": f"{type(e).__name__}: {e}"}))
        return
    check_pin(ws, pinned)
    out = {"subprotocol": ws.subprotocol}
    try:
        if case == "frames":
            out.update(await frames(ws))
        elif case == "binary":
            out.update(await closed_after(ws, b"sys:ping:b1 {}"))
        elif case == "oversized":
            out.update(await closed_after(ws, "sys:ping:o1 " + "x" * (100 * 1024)))
        elif case == "newline":
            out.update(await closed_after(ws, "sys:ping:n1 {}\nsys:ping:n2 {}"))
        else:
            raise SystemExit(f"unknown case {case}")
    except websockets.ConnectionClosed as closed:
        # A stranger's certificate is refused after the TLS 1.3 handshake:
        # the first read fails.
        out = {"refused": f"connection closed: {closed}"}
    except ssl.SSLError as e:
        out = {"refused": f"SSLError: {e}"}
    print(json.dumps(out))


asyncio.run(main())
