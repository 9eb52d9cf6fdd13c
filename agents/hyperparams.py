"""The hyperparameter block of a training program, read and set by name: the module-level
`NAME = value` constants that a person (or an agent) changes one line at a time. Pure
functions on strings, with the same guarantees as editing.py: an edit replaces exactly one
value's source span, and the result must compile, or nothing changes."""

from __future__ import annotations

import ast
import builtins
import difflib
import io
import operator
import re
import tokenize
from dataclasses import dataclass

from . import pysource
from .editing import DEFAULT_NAME, EditError, EditResult, _check_compiles, _clip, _diff, _newline, _parse

__all__ = ["Hyper", "constant_number", "hyperparameters", "set_hyperparameters"]


@dataclass(frozen=True)
class Hyper:
    """One module-level `NAME = value` assignment: value_source is the exact source text of
    the right-hand side, value its Python value where it is a constant (else None), line the
    assignment's first line."""

    name: str
    value_source: str
    value: object
    line: int


_UPPER = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_OWN_SCOPE = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# A value with any of these computes something at run time; it is not a setting.
_NOT_SIMPLE = (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr) + _OWN_SCOPE
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv,
               ast.Mod: operator.mod, ast.Pow: operator.pow}
_MODULE_NAMES = {"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__",
                 "__builtins__", "__annotations__", "__path__", "__cached__"}


def _module_bindings(tree: ast.Module) -> dict[str, list[int]]:
    """Every name bound in the module's own scope -> the lines that bind it (assignments,
    augmented assignments, imports, defs, loop and with targets, `global` in functions)."""
    found: dict[str, list[int]] = {}

    def add(name: str, node: ast.AST) -> None:
        found.setdefault(name, []).append(getattr(node, "lineno", 0))

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _SCOPES):
                add(child.name, child)
                for inner in ast.walk(child):
                    if isinstance(inner, ast.Global):
                        for name in inner.names:
                            add(name, inner)
                continue
            if isinstance(child, _OWN_SCOPE):
                continue
            if isinstance(child, ast.Name) and isinstance(child.ctx, (ast.Store, ast.Del)):
                add(child.id, child)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for alias in child.names:
                    if alias.name != "*":
                        add((alias.asname or alias.name).split(".")[0], child)
            elif isinstance(child, ast.ExceptHandler) and child.name:
                add(child.name, child)
            visit(child)

    visit(tree)
    return found


def _assignment(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    """(name, value) for `NAME = value` or `NAME: type = value`, else None."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None and stmt.simple:
        target, value = stmt.target, stmt.value
    else:
        return None
    return (target.id, value) if isinstance(target, ast.Name) else None


def _is_simple(value: ast.expr) -> bool:
    return not any(isinstance(node, _NOT_SIMPLE) for node in ast.walk(value))


def constant_number(node: ast.AST) -> int | float | None:
    """The value of constant arithmetic on numbers (2**19, 6e-4 * 2, -1), else None."""
    if isinstance(node, ast.Constant):
        value = node.value
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = constant_number(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = constant_number(node.left), constant_number(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 2**64):
            return None  # not a hyperparameter, and must not stall the reader
        try:
            return _ARITHMETIC[type(node.op)](left, right)
        except (ArithmeticError, ValueError, TypeError):
            return None
    return None


def _value(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return constant_number(node)


def _found(text: str, tree: ast.Module) -> dict[str, tuple[Hyper, ast.stmt]]:
    bindings = _module_bindings(tree)
    found = {}
    for stmt in tree.body:
        pair = _assignment(stmt)
        if pair is None:
            continue
        name, value = pair
        if not _UPPER.match(name) or len(bindings.get(name, ())) != 1 or not _is_simple(value):
            continue
        source = ast.get_source_segment(text, value)
        if source is None:
            continue
        found[name] = (Hyper(name, source, _value(value), stmt.lineno), stmt)
    return found


def hyperparameters(text: str) -> dict[str, Hyper]:
    """The module-level `NAME = value` (or `NAME: type = value`) assignments of UPPER_CASE
    names, in file order, whose value is a literal or a simple expression: constants, names,
    attributes, subscripts, operators, conditionals and containers, but no call, lambda,
    comprehension or walrus (a value that calls something is computed, not set). A name bound
    more than once at module level is left out: which binding counts is not a one-line
    question. `value` is ast.literal_eval of the value, or the result of constant number
    arithmetic such as 2**19, else None. Raises EditError when the text does not parse."""
    return {name: hyper for name, (hyper, _) in _found(text, _parse(text)).items()}


def _offset(lines: list[str], starts: list[int], line: int, col: int) -> int:
    """The string index of an ast position (1-based line, UTF-8 byte column)."""
    return starts[line - 1] + len(lines[line - 1].encode("utf-8")[:col].decode("utf-8", "replace"))


def _why_not_settable(name: str, tree: ast.Module, known: list[str]) -> str:
    bindings = _module_bindings(tree)
    lines = bindings.get(name, [])
    if len(lines) > 1:
        where = ", ".join(str(n) for n in lines[:10])
        return (f"{name} is bound {len(lines)} times at module level (lines {where}), so it "
                "has no single value to set; change it with a snippet replacement.")
    if len(lines) == 1 and _UPPER.match(name):
        stmt = next((s for s in tree.body if s.lineno <= lines[0] <= (s.end_lineno or s.lineno)),
                    None)
        pair = None if stmt is None else _assignment(stmt)
        why = ("its value is computed (it calls a function or uses a lambda or comprehension)"
               if pair is not None and pair[0] == name else "it is not a plain `NAME = value` "
               "statement at module level")
        return f"{name} (line {lines[0]}) cannot be set here: {why}; change it with a snippet replacement."
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if name.upper() != name:
        close += [c for c in difflib.get_close_matches(name.upper(), known, n=3, cutoff=0.6)
                  if c not in close]
    guess = f"; did you mean {' or '.join(close)}?" if close else "."
    return f"unknown hyperparameter {name!r}{guess} Known: {', '.join(known)}."


def _value_tree(name: str, source: object) -> tuple[str, ast.expr]:
    if isinstance(source, (bool, int, float)):
        source = repr(source)
    if not isinstance(source, str):
        raise EditError(f"the value for {name} must be Python source text, e.g. \"0.04\" or "
                        "'\"SSSL\"'.")
    source = source.strip()
    if not source:
        raise EditError(f"the value for {name} is empty; give the new right-hand side, e.g. 0.04.")
    try:
        expr = pysource.parse(source, mode="eval").body
    except SyntaxError as error:
        raise EditError(f"the value for {name} is not a Python expression ({error.msg}): "
                        f"`{_clip(source)}`; give only the right-hand side, e.g. 0.04 or "
                        "\"SSSL\" for a string.") from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise EditError(f"the value for {name} is not a Python expression ({error}).") from None
    try:
        comment = any(t.type == tokenize.COMMENT
                      for t in tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        comment = False
    if comment:
        raise EditError(f"the value for {name} contains a comment; give only the expression "
                        "(the comment already on the line is kept).")
    if not _is_simple(expr):
        raise EditError(f"the value for {name} calls a function or uses a lambda, comprehension "
                        "or walrus; give a literal or simple expression, or change the line with "
                        "a snippet replacement.")
    return source, expr


def _undefined(expr: ast.expr, tree: ast.Module, bindings: dict[str, list[int]]) -> list[str]:
    """Names the value reads that nothing in the module (or Python's builtins) defines."""
    if any(isinstance(s, ast.ImportFrom) and any(a.name == "*" for a in s.names)
           for s in ast.walk(tree)):
        return []  # a star import could define anything
    defined = set(bindings) | set(dir(builtins)) | _MODULE_NAMES
    local = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    local |= {a.arg for n in ast.walk(expr) if isinstance(n, ast.Lambda) for a in ast.walk(n.args)
              if isinstance(a, ast.arg)}
    names = [n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return [n for n in dict.fromkeys(names) if n not in defined and n not in local]


def set_hyperparameters(text: str, values: dict[str, str], name: str = DEFAULT_NAME) -> EditResult:
    """Set the right-hand sides of hyperparameters (names as `hyperparameters` finds them) to
    new Python source, e.g. {"MATRIX_LR": "0.04", "WINDOW_PATTERN": '"SSSL"'}.

    Only the source span of each old value is replaced, so the rest of the line (an inline
    comment, say) is kept. All or nothing: the first problem raises EditError and nothing is
    changed. Refused: no values; a name that is not a settable hyperparameter (the message
    lists the known names and close matches); a value that is not a single simple expression
    (a statement, a comment, a function call), or that reads a name the module does not
    define (a string must be quoted: '"SSSL"', not 'SSSL'); values that change nothing; a
    result that does not parse and compile, or in which any other statement changed."""
    if not values:
        raise EditError('no values given; pass {NAME: new value}, e.g. {"MATRIX_LR": "0.05"}.')
    tree = _parse(text)
    found = _found(text, tree)
    known = list(found)
    bindings = _module_bindings(tree)
    edits = []  # (start, end, new source, name, expected value tree)
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    for key, source in values.items():
        if key not in found:
            raise EditError(_why_not_settable(str(key), tree, known))
        source, expr = _value_tree(key, source)
        missing = _undefined(expr, tree, bindings)
        if missing:
            hint = (f"; to set a string, quote it: '\"{source}\"'"
                    if len(missing) == 1 and missing[0] == source else "")
            raise EditError(f"the value for {key} reads {', '.join(missing)}, which the file does "
                            f"not define{hint}.")
        value = _assignment(found[key][1])[1]
        begin = _offset(lines, starts, value.lineno, value.col_offset)
        end = _offset(lines, starts, value.end_lineno, value.end_col_offset)
        edits.append((begin, end, source, key, expr))
    if all(source == found[key][0].value_source for _, _, source, key, _ in edits):
        current = ", ".join(f"{key} = {source}" for _, _, source, key, _ in edits)
        raise EditError(f"no change: the file already has {current}.")
    newline = _newline(text)
    result = text
    for begin, end, source, _, _ in sorted(edits, reverse=True):
        result = result[:begin] + source.replace("\r\n", "\n").replace("\n", newline) + result[end:]
    edited = {found[key][1].lineno for *_, key, _ in edits}
    first = min(edited)
    last = max(found[key][1].end_lineno or first for *_, key, _ in edits)
    last += result.count("\n") - text.count("\n")
    _check_compiles(text, result, name, first, max(first, last))
    after = _parse(result, "the result")
    expected = {id(found[key][1]): (key, ast.dump(expr)) for *_, key, expr in edits}
    if len(after.body) != len(tree.body):
        raise EditError("the edit was not applied: a value spilled out of its assignment; give "
                        "each value as one expression, with no semicolon or comment.")
    spans = []
    for old_stmt, new_stmt in zip(tree.body, after.body):
        if id(old_stmt) in expected:
            key, dump = expected[id(old_stmt)]
            pair = _assignment(new_stmt)
            ok = pair is not None and pair[0] == key and ast.dump(pair[1]) == dump
            spans.append((new_stmt.lineno, new_stmt.end_lineno or new_stmt.lineno))
        else:
            ok = ast.dump(old_stmt) == ast.dump(new_stmt)
        if not ok:
            raise EditError("the edit was not applied: a value spilled out of its assignment; "
                            "give each value as one expression, with no semicolon or comment.")
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    return EditResult(result, first, last, _diff(text, result, name))
