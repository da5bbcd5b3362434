#!/usr/bin/env python3
"""The crate's import graph, module by module, and its cycles.

    scripts/modgraph.py [src] [--top]

Prints, for each module (one file), the crate modules it refers to: `use crate::…`, `super::…`,
paths in code, and names re-exported at the crate root (`crate::WsStats`), traced to the module
that defines them. A module's own submodules are its parts, not imports, so `mod x; pub use
x::…` draws no edge; doc comments, `#[cfg(doc)]` imports and `mod tests` are left out. `--top`
folds the graph to the top-level modules. Exits with 1 when the graph has a cycle.

A reading of the source by patterns, not by the compiler: good enough to draw the structure and
to catch a new cycle, not a proof.
"""
import os
import re
import sys

USE_TREE = re.compile(r'(?<!pub\()(?<!in )(?<!\w)((?:crate|super|self)(?:::\w+)*)(::\{([^;]*?)\})?')
REEXPORT = re.compile(r'pub use ([a-z_:]+)::\{([^}]*)\}|pub use ([a-z_:]+)::(\w+);')
DEFINITION = re.compile(r'pub(?:\(crate\))? (?:struct|enum|trait|type|fn|const) ([A-Z]\w*)')


def modules(root):
    """Module path (`server::directory`) to file, for every `.rs` file under `root`."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.rs'):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[:-3].split('/')
                if parts[-1] in ('mod', 'lib'):
                    parts = parts[:-1]
                found['::'.join(parts) or 'crate'] = path
    return found


def code_of(path):
    """The file's code, without its tests, comments and doc-only imports."""
    text = open(path).read()
    text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
    text = re.sub(r'//[^\n]*', '', text)
    return re.sub(r'#\[cfg\(doc\)\]\s*use[^;]*;', '', text)


def resolve(mods, current, path):
    """The longest module that `path` (from `current`) names, or None."""
    segments = path.split('::')
    if segments[0] == 'crate':
        base, segments = [], segments[1:]
    else:
        base = current.split('::') if current != 'crate' else []
        while segments and segments[0] in ('super', 'self'):
            if segments[0] == 'super':
                base = base[:-1]
            segments = segments[1:]
    best = None
    for i in range(len(segments) + 1):
        candidate = '::'.join(base + segments[:i]) or 'crate'
        if candidate in mods:
            best = candidate
    return best


def graph_of(root):
    mods = modules(root)
    # Names re-exported at the root, traced to the module that defines them.
    defined = {}
    for module, path in mods.items():
        for m in DEFINITION.finditer(open(path).read()):
            defined.setdefault(m.group(1), module)
    rooted = {}
    for m in REEXPORT.finditer(open(os.path.join(root, 'lib.rs')).read()):
        items = m.group(2) if m.group(1) else m.group(4)
        for item in items.split(','):
            name = item.strip()
            if name in defined:
                rooted[name] = defined[name]
    graph = {}
    for module, path in mods.items():
        code = code_of(path)
        deps = set()
        prefix = module + '::' if module != 'crate' else ''
        for m in re.finditer(r'(?<![:\w])([a-z_][a-z0-9_]*)::', code):
            if prefix + m.group(1) in mods:
                deps.add(prefix + m.group(1))
        for m in re.finditer(r'crate::([A-Z]\w*)', code):
            if m.group(1) in rooted:
                deps.add(rooted[m.group(1)])
        for m in USE_TREE.finditer(code):
            head, tree = m.group(1), m.group(3)
            targets = [head]
            if tree:
                for item in tree.split(','):
                    item = item.split(' as ')[0].replace('{', '').replace('}', '').strip()
                    if item:
                        targets.append(head + '::' + item)
            deps.update(filter(None, (resolve(mods, module, t) for t in targets)))
        graph[module] = sorted(d for d in deps if d != module and d != 'crate' and not d.startswith(prefix or '\0'))
    return graph


def fold(graph):
    folded = {}
    for module, deps in graph.items():
        top = module.split('::')[0]
        folded.setdefault(top, set()).update(d.split('::')[0] for d in deps if d.split('::')[0] != top)
    return {module: sorted(deps) for module, deps in folded.items()}


def cycles(graph):
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return groups


def main():
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    graph = graph_of(args[0] if args else 'src')
    if '--top' in sys.argv:
        graph = fold(graph)
    for module in sorted(graph):
        if module != 'crate':
            print(f"{module} -> {', '.join(graph[module])}")
    found = cycles(graph)
    print('\ncycles:' if found else '\nno cycles')
    for group in found:
        print('  ' + ' <-> '.join(group))
    sys.exit(1 if found else 0)


if __name__ == '__main__':
    main()
