"""`stella-build query`: deps(X), rdeps(U, X), kind(RULE, X) and plain patterns over the loaded graph.

Grammar:  expr := pattern | deps(expr) | rdeps(expr) | rdeps(expr, expr) | kind(name, expr)
`rdeps(X)` uses every package of the workspace (//...) as its universe.
"""
from __future__ import annotations

import re

from stella_build.engine.analysis import TargetGraph, load_graph
from stella_build.engine.errors import UsageError
from stella_build.engine.labels import Label
from stella_build.engine.workspace import Workspace

_TOKEN = re.compile(r"\s*(?:(\()|(\))|(,)|([^\s(),]+))")


def _tokens(text: str) -> list[str]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UsageError(f"query: cannot parse near '{text[pos:]}'")
        out.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected and tok != expected):
            raise UsageError(f"query: expected '{expected or 'an expression'}' in '{self.text}'")
        self.i += 1
        return tok

    def expr(self):
        head = self.take()
        if self.peek() == "(":
            if head not in ("deps", "rdeps", "kind"):
                raise UsageError(f"query: unknown function '{head}' (deps, rdeps, kind)")
            self.take("(")
            args = [self.expr() if head != "kind" else ("word", self.take())]
            while self.peek() == ",":
                self.take(",")
                args.append(self.expr())
            self.take(")")
            return (head, *args)
        return ("pattern", head)


def parse_query(text: str):
    p = _Parser(text)
    tree = p.expr()
    if p.peek() is not None:
        raise UsageError(f"query: unexpected '{p.peek()}' in '{text}'")
    return tree


def _patterns(tree) -> list[str]:
    if tree[0] == "pattern":
        return [tree[1]]
    if tree[0] == "word":
        return []
    return [p for arg in tree[1:] for p in _patterns(arg)]


def run_query(workspace: Workspace, text: str) -> tuple[list[Label], TargetGraph]:
    tree = parse_query(text)
    universe_needed = any(t == "rdeps" for t in _walk(tree))
    patterns = _patterns(tree) + (["//..."] if universe_needed else [])
    graph = load_graph(workspace, patterns)

    def ev(node) -> set[Label]:
        kind = node[0]
        if kind == "pattern":
            return set(load_graph(workspace, [node[1]]).requested)
        if kind == "deps":
            result, stack = set(), list(ev(node[1]))
            while stack:
                lbl = stack.pop()
                if lbl not in result:
                    result.add(lbl)
                    stack.extend(graph.deps_of[lbl])
            return result
        if kind == "rdeps":
            targets = ev(node[-1])
            universe = ev(node[1]) if len(node) == 3 else set(graph.order)
            rev: dict[Label, set[Label]] = {}
            for lbl in universe:
                for dep in graph.deps_of.get(lbl, []):
                    rev.setdefault(dep, set()).add(lbl)
            result, stack = set(), list(targets)
            while stack:
                lbl = stack.pop()
                if lbl not in result:
                    result.add(lbl)
                    stack.extend(rev.get(lbl, ()))
            return result
        if kind == "kind":
            rule = node[1][1]
            return {lbl for lbl in ev(node[2]) if graph.rule_of(lbl) == rule}
        raise UsageError(f"query: bad expression {node}")

    labels = sorted(ev(tree))
    return labels, graph


def _walk(tree):
    yield tree[0]
    for arg in tree[1:]:
        if isinstance(arg, tuple):
            yield from _walk(arg)


def to_dot(labels: list[Label], graph: TargetGraph) -> str:
    chosen = set(labels)
    lines = ["digraph stella {", "  rankdir=LR;", "  node [shape=box];"]
    for lbl in labels:
        lines.append(f'  "{lbl}" [label="{lbl}\\n({graph.rule_of(lbl)})"];')
    for lbl in labels:
        for dep in graph.deps_of.get(lbl, []):
            if dep in chosen:
                lines.append(f'  "{lbl}" -> "{dep}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
