#!/usr/bin/env python3
"""The crate's module dependency graph, from the `use crate::...` paths and `crate::...`
references in src/, and its cycles.

    scripts/module-graph.py            top-level modules: their dependencies, then cycles
    scripts/module-graph.py --full     the same for every module (config::types, ...)
    scripts/module-graph.py --check    print only cycles; exit 1 if there is one

A cycle is a strongly connected component of more than one module. Submodules of one module
depending on each other (`config::types` and `config::verifiers`) count at --full level.
Test code is not part of the graph: `tests` modules, and everything after `#[cfg(test)]`
(clippy keeps test modules last in a file).
"""

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "src")


def modules():
    """Module path (`config::types`) -> source text, for every file under src/."""
    found = {}
    for directory, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, SRC)[:-3].split(os.sep)
            if parts[-1] == "tests":
                continue
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            with open(path, encoding="utf-8") as source:
                text = source.read()
            found["::".join(parts) or "crate"] = text.split("#[cfg(test)]", 1)[0]
    return found


def expand(tree):
    """The paths a use tree names: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        return [tree.split(" as ")[0].strip()]
    prefix = tree[:brace].rstrip(":").strip()
    inner = tree[brace + 1:tree.rindex("}")]
    items, start, depth = [], 0, 0
    for i, char in enumerate(inner):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    paths = []
    for item in filter(str.strip, items):
        for sub in expand(item):
            paths.append(f"{prefix}::{sub}" if prefix else sub)
    return paths


def referenced_paths(source):
    source = re.sub(r"//[^\n]*", "", source)
    for match in re.finditer(r"\buse\s+(crate::[^;]*);", source, re.S):
        yield from expand(match.group(1))
    for match in re.finditer(r"(?<!use )\bcrate::((?:\w+::)*\w+)", source):
        yield "crate::" + match.group(1)


def edges(found, top_level):
    result = set()
    for module, source in found.items():
        for path in referenced_paths(source):
            parts = path.split("::")[1:]
            target = next(("::".join(parts[:k]) for k in range(len(parts), 0, -1)
                           if "::".join(parts[:k]) in found), None)
            if target is None or target == module:
                continue
            # A module and its own submodules or parents are one unit.
            if target.startswith(module + "::") or module.startswith(target + "::"):
                continue
            a, b = (module.split("::")[0], target.split("::")[0]) if top_level else (module, target)
            if a != b:
                result.add((a, b))
    return result


def cycles(graph_edges):
    """Strongly connected components with more than one node (Tarjan)."""
    graph = {}
    for a, b in graph_edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every module, not only top-level ones")
    parser.add_argument("--check", action="store_true", help="only cycles; exit 1 if any")
    args = parser.parse_args()
    found = modules()
    graph_edges = edges(found, top_level=False) | edges(found, top_level=True) if args.check \
        else edges(found, top_level=not args.full)
    if not args.check:
        for module in sorted({a for a, _ in graph_edges}):
            targets = sorted(b for a, b in graph_edges if a == module)
            print(f"{module} -> {', '.join(targets)}")
    found_cycles = cycles(edges(found, top_level=True)) + cycles(edges(found, top_level=False))
    for component in found_cycles:
        print("cycle: " + " <-> ".join(component))
    if not found_cycles:
        print("no module cycles")
    return 1 if args.check and found_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
