#!/usr/bin/env python3
"""Writes the request file bench/http/replay.lua replays, one request per line.

    requests.py users N SECRET              -> N lines "user_id<TAB>token" (HS256, 1 day)
    requests.py me|posts|feed USERS_FILE    -> one request per user, with its bearer token
    requests.py sports|verify N SECRET      -> N signed sports webhooks, unique ids
    requests.py get PATH                    -> one unauthenticated GET
"""
import base64, hashlib, hmac, json, sys, time, uuid

US = "\x1f"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(secret: str, sub: str) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({
        "sub": sub, "exp": int(time.time()) + 86400,
        "iss": "groundcrew", "aud": "groundcrew-api",
    }).encode())
    signing_input = f"{header}.{claims}".encode()
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(sig)}"


def line(method, path, headers, body=""):
    return "\t".join([method, path, US.join(f"{k}: {v}" for k, v in headers.items()), body])


def user_requests(kind, users_file):
    for no, row in enumerate(open(users_file)):
        user_id, tok = row.rstrip("\n").split("\t")
        auth = {"Authorization": f"Bearer {tok}"}
        if kind == "me":
            body = json.dumps({"handle": f"bench_{no}", "display_name": f"Bench user {no}"})
            yield line("PUT", "/v1/me", {**auth, "Content-Type": "application/json"}, body)
        elif kind == "posts":
            body = json.dumps({"text": f"leg day, set {no}"})
            yield line("POST", "/v1/posts", {**auth, "Content-Type": "application/json"}, body)
        else:
            yield line("GET", "/v1/feed?limit=20", auth)


def webhooks(kind, n, secret):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    now = int(time.time())
    path = "/v1/webhooks/sports" if kind == "sports" else "/verify"
    for _ in range(n):
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps({"type": "event.result", "data": {
            "external_id": "bench-missing", "status": "final", "home_score": 1, "away_score": 0}},
            separators=(",", ":"))
        mac = hmac.new(key, f"{msg_id}.{now}.{body}".encode(), hashlib.sha256).digest()
        yield line("POST", path, {
            "Content-Type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(now), "webhook-signature": f"v1,{base64.b64encode(mac).decode()}",
        }, body)


def main(kind, *args):
    if kind == "users":
        rows = (f"{sub}\t{token(args[1], sub)}" for sub in (str(uuid.uuid4()) for _ in range(int(args[0]))))
    elif kind in ("me", "posts", "feed"):
        rows = user_requests(kind, args[0])
    elif kind in ("sports", "verify"):
        rows = webhooks(kind, int(args[0]), args[1])
    else:
        rows = [line("GET", args[0], {})]
    for row in rows:
        print(row)


if __name__ == "__main__":
    main(*sys.argv[1:])
