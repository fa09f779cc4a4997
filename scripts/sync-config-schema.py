#!/usr/bin/env python3
"""Embeds the configuration's JSON Schema (`portcullis config-schema`, generated from the
Rust config types) into the Helm chart's values.schema.json as `config.allOf[0]`, so that
`helm install/upgrade` refuses a misspelled or ill-typed config key. The chart's own
constraints on `config` (listen addresses it derives ports from) stay beside it.

Usage: scripts/sync-config-schema.py [PORTCULLIS_BINARY]   (default: target/debug/portcullis)
tests/helm/test_config_schema.py fails when the two drift apart.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUES_SCHEMA = os.path.join(REPO, "helm", "portcullis", "values.schema.json")


def generated(binary):
    schema = json.loads(subprocess.check_output([binary, "config-schema"], text=True))
    for key in ("$schema", "title"):
        schema.pop(key, None)
    return schema


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target", "debug", "portcullis")
    with open(VALUES_SCHEMA) as f:
        values_schema = json.load(f)
    values_schema["properties"]["config"]["allOf"] = [generated(binary)]
    with open(VALUES_SCHEMA, "w") as f:
        json.dump(values_schema, f, indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
