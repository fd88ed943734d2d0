#!/usr/bin/env python3
"""Markdown table of medians from bench/run-http.sh result files (JSON lines)."""
import json, statistics, sys

runs = {}
for path in sys.argv[1:]:
    for raw in open(path):
        if raw.startswith("{"):
            row = json.loads(raw)
            if "rate" in row:
                runs.setdefault(row["target"], []).append(row)

print("| target | req/s | p50 ms | p99 ms | non-2xx | runs (req/s) |")
print("|---|---:|---:|---:|---:|---|")
for target, rows in runs.items():
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f"| {target} | {med('rate'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | "
          f"{sum(r['non2xx'] + r['socket_errors'] for r in rows)} | "
          f"{', '.join(format(r['rate'], ',.0f') for r in rows)} |")
