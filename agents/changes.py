"""A change's canonical key: the same edit made on any lane, or twice, or formatted another
way, gives the same key, so a change already tried never reaches a GPU again."""

from __future__ import annotations

import ast
import copy
import difflib

from .editing import _parse
from .hyperparams import _SCOPES

__all__ = ["normalized_change"]


def _canonical(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.kind = None  # u"x" is "x"
    return tree


def _header(node: ast.stmt) -> str:
    bare = copy.copy(node)
    bare.body = []
    return ast.dump(bare)


def _changed(old: list[ast.stmt], new: list[ast.stmt], path: str) -> list[str]:
    """'- stmt' for each statement removed and '+ stmt' for each added, statements compared
    by AST; inside a def or class whose header is unchanged, its body's changes instead,
    prefixed with the qualified name."""
    prefix = f"{path}: " if path else ""
    matcher = difflib.SequenceMatcher(None, [ast.dump(s) for s in old], [ast.dump(s) for s in new],
                                      autojunk=False)
    entries = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        removed, added = list(old[i1:i2]), list(new[j1:j2])
        for before in list(removed):
            if not isinstance(before, _SCOPES):
                continue
            for after in added:
                if (type(after) is type(before) and after.name == before.name
                        and _header(after) == _header(before)):
                    inner = f"{path}.{before.name}" if path else before.name
                    entries += _changed(before.body, after.body, inner)
                    removed.remove(before)
                    added.remove(after)
                    break
        entries += [f"- {prefix}{ast.unparse(s)}" for s in removed]
        entries += [f"+ {prefix}{ast.unparse(s)}" for s in added]
    return entries


def normalized_change(before: str, after: str) -> str:
    """A canonical key of the change from `before` to `after`: one line per changed statement,
    "- <statement>" removed and "+ <statement>" added, each as ast.unparse writes it (prefixed
    with "Class.method: " when the change is inside an unchanged def or class header), sorted
    and joined by newlines. Statements are compared by their AST, so comments, whitespace,
    line breaks, redundant parentheses, quote style and number spelling (0.040, 4e-2, 0.04;
    10_000, 10000) do not count. The same edit of the same parent always gives the same key,
    a different value a different key, and a formatting-only edit "" (no change). Raises
    EditError when either text does not parse."""
    old = _canonical(_parse(before, "the text before the change"))
    new = _canonical(_parse(after, "the text after the change"))
    return "\n".join(sorted(_changed(old.body, new.body, "")))
