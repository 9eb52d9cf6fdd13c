"""Parsing Python source on the proposal threads, several lanes at once.

CPython 3.11's parser keeps its AST recursion-depth bookkeeping per interpreter, not per
thread: two lanes parsing at the same moment can fail with "SystemError: AST constructor
recursion depth mismatch" (seen in the demo, costing a lane its proposal). `warnings`' filters
are process-wide too. So every parse and compile here takes one lock; a parse of a training
program takes a few milliseconds, far below a proposal's seconds."""

from __future__ import annotations

import ast
import threading
import warnings

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    """ast.parse, thread-safe, with SyntaxWarnings (say, "\\d" in a string) silenced."""
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source, filename=filename, mode=mode)


def compile_module(source: str, filename: str) -> None:
    """Parse and compile as a module (compile catches what the parser lets through, such as
    `return` outside a function); raises SyntaxError."""
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ast.parse(source, filename=filename)
        compile(source, filename, "exec", dont_inherit=True)
