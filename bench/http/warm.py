#!/usr/bin/env python3
"""Sends every request of a file written by requests.py once, CONCURRENCY at a time, and prints
one JSON line with how long that took. run-http.sh reads every home feed once this way before
it times feed reads: a first read rebuilds the feed from Postgres, and the rebuilds get a line
of their own instead of landing in the steady-state figures.

    warm.py BASE_URL FILE CONCURRENCY TARGET
"""
import concurrent.futures, json, sys, time, urllib.error, urllib.request

US = "\x1f"


def send(base, row):
    method, path, headers, body = row.rstrip("\n").split("\t")
    fields = dict(h.split(": ", 1) for h in headers.split(US) if h)
    request = urllib.request.Request(
        base + path, data=body.encode() or None, headers=fields, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def main(base, file, concurrency, target):
    rows = open(file).readlines()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(int(concurrency)) as pool:
        statuses = list(pool.map(lambda row: send(base, row), rows))
    secs = time.monotonic() - started
    print(json.dumps({
        "target": target, "requests": len(rows), "secs": round(secs, 2),
        "per_sec": round(len(rows) / secs, 1),
        "non2xx": sum(1 for s in statuses if not 200 <= s < 300),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
