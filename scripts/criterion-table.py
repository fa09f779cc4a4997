#!/usr/bin/env python3
"""Prints the verify micro-benchmark results (target/criterion) as a Markdown table."""
import glob
import json
import os

rows = {}
for path in glob.glob("target/criterion/*/new/estimates.json"):
    name = path.split(os.sep)[2]  # e.g. verify_uncached_ES256
    group, alg = name.rsplit("_", 1)
    rows.setdefault(alg, {})[group] = json.load(open(path))["mean"]["point_estimate"] / 1000

print("| algorithm | signature only (µs) | uncached verify (µs) | cached verify (µs) |")
print("|---|---|---|---|")
for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"]:
    r = rows.get(alg, {})
    print(f"| {alg} | {r.get('signature', 0):.1f} | {r.get('verify_uncached', 0):.1f} | {r.get('verify_cached', 0):.2f} |")
