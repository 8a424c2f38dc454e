#!/usr/bin/env python3
"""No import cycles between the files of a crate.

Each layer may import only those below it (ARCHITECTURE.md), so inside every crate the files'
imports form no circle: if `bus/serial.rs` imports `config`, nothing `config` imports may lead
back to `bus`. Cargo enforces this between crates, not inside one; this script checks it inside.

For every crate root of the workspace (`src/lib.rs`, `src/main.rs`, and the integration-test
crate `tests/main.rs`), it maps each `.rs` file to its module path, reads every path the file
names (`use` trees with their braces, and `crate::…`, `super::…`, `self::…` or `child::…` paths in
code), resolves each to the deepest module file that exists, and reports every strongly connected
group of files, with one line per import that closes it. Comments and string literals are
skipped; `super` inside an inline `mod tests { … }` counts from that inline module. An import of
an ancestor module (a child naming `super::Thing`) is not an edge: the ancestor declares the child,
so that link exists anyway and would make every re-export look circular.

It also checks the layer rules of the daemon library (`LAYERS`): the field side (`bus`), the
pure mapping and the hub side import none of the layers above them and not the config loader,
and services do not import the supervisor.

Usage: scripts/check-import-cycles.py [REPO]   (exit 0: no cycle; 1: cycles, listed on stderr)
Run by .ci/run beside scripts/check-layers.sh.
"""

import os
import re
import sys

# Crate source folder → {module: modules it must not import}. The daemon's lower layers know
# nothing above them (ARCHITECTURE.md, "Layers inside the daemon library").
LAYERS = {
    "crates/leafgate/src": {
        "bus": ["config", "mapping", "hub", "services", "gateway"],
        "mapping": ["config", "hub", "services", "gateway"],
        "hub": ["config", "mapping", "services", "gateway"],
        "services": ["gateway"],
        # The registry every layer records into: it knows none of them.
        "metrics": ["config", "bus", "mapping", "hub", "services", "gateway"],
        # `leafgate model`: the config as validated, described; nothing that runs.
        "model": ["bus", "hub", "services", "gateway"],
    },
}

# vendor/: third-party crates carried with a patch (vendor/README.md), not ours to lay out.
SKIP_DIRS = {"target", ".git", "fuzz", "node_modules", ".venv", "vendor"}
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def blank_comments_and_strings(text):
    """The text with comments and string/char literals replaced by spaces (newlines kept), so
    positions and line numbers stay valid and nothing inside them reads as a path."""
    out = list(text)
    i, n = 0, len(text)

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (i == 0 or not re.match(r"\w", text[i - 1])):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            blank(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
        elif c == "'" and (m := re.compile(r"'(\\(x..|u\{[0-9a-fA-F]+\}|.)|[^\\'])'").match(text, i)):
            blank(i, m.end())
            i = m.end()
        else:
            i += 1
    return "".join(out)


def crate_roots(top):
    """(source folder, root file) for each crate: src/lib.rs, src/main.rs, tests/main.rs."""
    for d, subs, files in os.walk(top):
        subs[:] = sorted(s for s in subs if s not in SKIP_DIRS)
        base = os.path.basename(d)
        if base == "src":
            for root in ("lib.rs", "main.rs"):
                if root in files:
                    yield d, root
        elif base == "tests" and "main.rs" in files and os.path.isfile(os.path.join(os.path.dirname(d), "Cargo.toml")):
            yield d, "main.rs"


def module_files(src, root):
    """Module path (tuple) → file, for the crate whose root is src/root."""
    other_root = {"lib.rs": "main.rs", "main.rs": "lib.rs"}[root]
    mods = {}
    for d, subs, files in os.walk(src):
        subs[:] = sorted(s for s in subs if s not in {"bin", "fixtures"} | SKIP_DIRS)
        for f in files:
            if not f.endswith(".rs") or (d == src and f == other_root):
                continue
            rel = os.path.relpath(os.path.join(d, f), src)[:-3].split(os.sep)
            if rel == [root[:-3]]:
                rel = []
            elif rel[-1] == "mod":
                rel = rel[:-1]
            mods[tuple(rel)] = os.path.join(d, f)
    return mods


def split_top(text, sep=","):
    """Splits on `sep` outside braces."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def expand_use(tree, prefix=()):
    """Every full path a `use` tree names: `a::{b, c::{d as e, self}}` → a::b, a::c::d, a::c."""
    tree = re.sub(r"\s*(::|\{|\}|,)\s*", r"\1", re.sub(r"\s+", " ", tree).strip())
    if not tree or tree.startswith("::"):
        return []  # empty, or an explicitly external path
    brace = tree.find("{")
    if brace < 0:
        path = [p for p in re.split(r" as ", tree)[0].split("::") if p]
        while path and path[-1] in ("self", "*"):
            path = path[:-1]
        return [prefix + tuple(path)]
    head = [p for p in tree[:brace].split("::") if p]
    inner = tree[brace + 1 : tree.rfind("}")]
    out = []
    for item in split_top(inner):
        out += expand_use(item, prefix + tuple(head))
    return out


def inline_modules(text):
    """(start, end, name) of every inline `mod name { … }` block."""
    spans = []
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", text):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        spans.append((m.start(), j, m.group(1)))
    return spans


def resolve(mods, here, path):
    """The module file a path points into, or None. `here` is the module the path is written in."""
    path = list(path)
    if not path:
        return None
    if path[0] == "crate":
        base, path = [], path[1:]
    elif path[0] in ("self", "super"):
        base = list(here)
        if path[0] == "self":
            path = path[1:]
        while path and path[0] == "super":
            base, path = base[:-1], path[1:]
    elif tuple(here) + (path[0],) in mods:
        base = list(here)  # a child module named without `self::`
    else:
        return None  # an external crate, the prelude, or a local item
    full = base + path
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in mods:
            return tuple(full[:k])
    return None


PATH_IN_CODE = re.compile(r"(?<![:\w])((?:crate|super|self|" + IDENT + r")(?:\s*::\s*" + IDENT + r")+)")
USE = re.compile(r"\buse\s+([^;]+);")


def edges(mods):
    """file → {imported file: line of the first import}."""
    out = {f: {} for f in mods.values()}
    for mp, f in mods.items():
        with open(f, encoding="utf-8", errors="replace") as fh:
            text = blank_comments_and_strings(fh.read())
        spans = inline_modules(text)

        def module_at(pos):
            # a file's own module is `mp`; inline modules (`mod tests { … }`) nest below it
            return mp + tuple(name for a, b, name in sorted(spans) if a <= pos < b)

        found = []
        use_spans = []
        for m in USE.finditer(text):
            use_spans.append((m.start(), m.end()))
            for path in expand_use(m.group(1)):
                found.append((m.start(), path))
        for m in PATH_IN_CODE.finditer(text):
            if any(a <= m.start() < b for a, b in use_spans):
                continue
            found.append((m.start(), tuple(re.sub(r"\s+", "", m.group(1)).split("::"))))
        for pos, path in found:
            here = module_at(pos)
            target = resolve(mods, here, path)
            if target is None or target == mp:
                continue
            if len(target) < len(mp) and mp[: len(target)] == target:
                continue  # an ancestor: see the module doc
            t = mods[target]
            if t not in out[f]:
                out[f][t] = text.count("\n", 0, pos) + 1
    return out


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index, low, on, stack, res = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph[w])))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    res.append(sorted(comp))
    return res


def main():
    top = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    crates = list(crate_roots(top))
    found = 0

    def rel(p):
        return os.path.relpath(p, top)

    for src, root in crates:
        graph = edges(module_files(src, root))
        for comp in cycles(graph):
            found += 1
            print(f"check-import-cycles: import cycle in {rel(src)}: {' '.join(rel(p) for p in comp)}", file=sys.stderr)
            members = set(comp)
            for f in comp:
                for t, line in sorted(graph[f].items()):
                    if t in members:
                        print(f"  {rel(f)}:{line} imports {rel(t)}", file=sys.stderr)
        rules = LAYERS.get(os.path.relpath(src, top).replace(os.sep, "/"), {})
        mods = {f: mp for mp, f in module_files(src, root).items()}
        for f, targets in sorted(graph.items()):
            layer = mods[f][:1]
            for t, line in sorted(targets.items()):
                above = mods[t][:1]
                if layer and above and above[0] in rules.get(layer[0], []):
                    found += 1
                    print(
                        f"check-import-cycles: {rel(f)}:{line} imports {rel(t)}: "
                        f"`{layer[0]}` must not import `{above[0]}` (a layer above it)",
                        file=sys.stderr,
                    )
    if found:
        print(
            f"check-import-cycles: {found} problem(s); move the shared type or function down into a "
            "module both sides may import (see ARCHITECTURE.md)",
            file=sys.stderr,
        )
        return 1
    print(
        f"check-import-cycles: {len(crates)} crates, no import cycle between their files; "
        + "; ".join(
            f"{layer} imports none of {', '.join(banned)}"
            for rules in LAYERS.values()
            for layer, banned in rules.items()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
