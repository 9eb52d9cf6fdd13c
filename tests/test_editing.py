"""The pure text logic behind the agent's editing tools, on this repo's real trainer/train.py
and on small snippets: anchored replacements that cannot truncate the file, hyperparameter
edits that touch only a value, and a change key that ignores formatting."""

import ast
import re
from pathlib import Path

import pytest

from agents.changes import normalized_change
from agents.editing import EditError, EditResult, numbered, replace_snippet
from agents.hyperparams import Hyper, hyperparameters, set_hyperparameters

ROOT = Path(__file__).resolve().parent.parent
TRAIN = (ROOT / "trainer" / "train.py").read_bytes().decode("utf-8")

SMALL = '''"""A small program."""
LR = 0.04  # learning rate
DEPTH = 8


def f(x):
    return x + 1


def g(x):
    return x + 1


print(f(LR), g(DEPTH))
'''

BLOCK_FORWARD = '''    def forward(self, x, ve, cos, sin, window):
        x = x + self.attn(norm(x), ve, cos, sin, window)
        return x + self.mlp(norm(x))
'''


# --- replace_snippet ----------------------------------------------------------------------

def test_unique_replacement_changes_only_the_snippet_and_leaves_the_rest_byte_identical():
    old = "        return x + self.mlp(norm(x))\n"
    new = "        return x + 0.5 * self.mlp(norm(x))\n"
    assert TRAIN.count(old) == 1
    result = replace_snippet(TRAIN, old, new)
    at = TRAIN.index(old)
    assert result.text[:at] == TRAIN[:at]
    assert result.text[at:at + len(new)] == new
    assert result.text[at + len(new):] == TRAIN[at + len(old):]
    line = TRAIN[:at].count("\n") + 1
    assert (result.first_line, result.last_line) == (line, line)


def test_result_carries_a_unified_diff_with_a_and_b_labels():
    result = replace_snippet(SMALL, "DEPTH = 8", "DEPTH = 10")
    assert isinstance(result, EditResult)
    lines = result.diff.splitlines()
    assert lines[0] == "--- a/train.py" and lines[1] == "+++ b/train.py"
    assert "-DEPTH = 8" in lines and "+DEPTH = 10" in lines
    assert replace_snippet(SMALL, "DEPTH = 8", "DEPTH = 10", name="m.py").diff.startswith("--- a/m.py\n+++ b/m.py\n")


def test_missing_snippet_is_refused_showing_the_closest_region_with_line_numbers():
    wrong = "MATRIX_LR = 0.04  # Muon, for the block matrices"  # the file says "blocks'"
    with pytest.raises(EditError) as caught:
        replace_snippet(TRAIN, wrong, "MATRIX_LR = 0.05")
    message = str(caught.value)
    line = TRAIN.split("\n").index("MATRIX_LR = 0.04  # Muon, for the blocks' matrices") + 1
    assert "not found" in message
    assert f"line {line}" in message
    assert f"{line}\tMATRIX_LR = 0.04  # Muon, for the blocks' matrices" in message


def test_missing_snippet_with_wrong_indentation_says_so():
    wrong = "          x = x + self.attn(norm(x), ve, cos, sin, window)\n        return x + self.mlp(norm(x))\n"
    with pytest.raises(EditError, match="indented by 8 characters where the snippet's is by 10"):
        replace_snippet(TRAIN, wrong, "pass\n")


def test_missing_snippet_that_skips_a_line_shows_the_whole_region_and_the_skipped_line():
    wrong = "class MLP(nn.Module):\n    def __init__(self, cfg):\n        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)\n"
    first = TRAIN.split("\n").index("class MLP(nn.Module):") + 1
    with pytest.raises(EditError) as caught:
        replace_snippet(TRAIN, wrong, "pass\n")
    message = str(caught.value)
    assert f"closest region is lines {first}-{first + 3}" in message
    assert f"its line {first + 2} `super().__init__()` is missing from the snippet" in message


def test_snippet_like_nothing_in_the_file_is_refused_without_a_region():
    with pytest.raises(EditError, match="nothing in the file is close to it"):
        replace_snippet(TRAIN, "zebra quagga okapi\n", "x = 1\n")


def test_ambiguous_snippet_lists_the_line_of_every_occurrence():
    with pytest.raises(EditError) as caught:
        replace_snippet(SMALL, "    return x + 1\n", "    return x + 2\n")
    message = str(caught.value)
    assert "occurs 2 times" in message
    assert "lines 7, 11" in message
    assert "include more surrounding lines" in message


def test_ambiguous_snippet_in_the_real_file_names_each_line():
    snippet = "nn.init.zeros_("
    expected = [i + 1 for i, line in enumerate(TRAIN.split("\n")) if snippet in line]
    assert len(expected) > 1
    with pytest.raises(EditError) as caught:
        replace_snippet(TRAIN, snippet, "nn.init.ones_(")
    listed = re.search(r"\(lines ([\d, ]+)\)", str(caught.value)).group(1)
    assert [int(n) for n in listed.split(", ")] == expected


def test_ambiguous_snippet_after_widening_is_accepted():
    result = replace_snippet(SMALL, "def g(x):\n    return x + 1\n", "def g(x):\n    return x + 2\n")
    assert "def f(x):\n    return x + 1\n" in result.text
    assert "def g(x):\n    return x + 2\n" in result.text


def test_trailing_whitespace_in_the_snippet_is_tolerated():
    result = replace_snippet(SMALL, "def f(x):   \n    return x + 1\t\n", "def f(x):\n    return x - 1\n")
    assert "def f(x):\n    return x - 1\n\n\ndef g(x):\n    return x + 1\n" in result.text


def test_trailing_whitespace_in_the_file_is_tolerated():
    text = SMALL.replace("DEPTH = 8\n", "DEPTH = 8   \n")
    result = replace_snippet(text, "DEPTH = 8\n", "DEPTH = 9\n")
    assert "DEPTH = 9\n\n\ndef f" in result.text
    assert result.text.count("\n") == text.count("\n")


def test_trailing_whitespace_tolerance_does_not_match_inside_a_line():
    # "DEPTH = 8 " may stand for the line "DEPTH = 8" but not for the start of "DEPTH = 80".
    text = SMALL.replace("DEPTH = 8\n", "DEPTH = 80\n")
    with pytest.raises(EditError, match="not found"):
        replace_snippet(text, "DEPTH = 8 ", "DEPTH = 9")


def test_indentation_is_not_tolerated():
    with pytest.raises(EditError, match="not found"):
        replace_snippet(SMALL, "def f(x):\n  return x + 1\n", "def f(x):\n  return x\n")


def test_lf_snippet_matches_a_crlf_file_and_the_result_keeps_crlf():
    text = SMALL.replace("\n", "\r\n")
    result = replace_snippet(text, "def f(x):\n    return x + 1\n", "def f(x):\n    y = x + 1\n    return y\n")
    assert "def f(x):\r\n    y = x + 1\r\n    return y\r\n\r\n\r\ndef g" in result.text
    assert "\n" not in result.text.replace("\r\n", "")


def test_crlf_snippet_matches_an_lf_file_and_the_result_keeps_lf():
    result = replace_snippet(SMALL, "LR = 0.04  # learning rate\r\nDEPTH = 8\r\n", "LR = 0.05  # learning rate\r\nDEPTH = 8\r\n")
    assert "\r" not in result.text
    assert result.text == SMALL.replace("LR = 0.04", "LR = 0.05")


def test_replacement_that_breaks_the_syntax_is_refused_and_the_text_is_unchanged():
    before = TRAIN
    old = "def lr_multiplier(progress):\n    if progress < WARMUP_RATIO:\n"
    with pytest.raises(EditError) as caught:
        replace_snippet(TRAIN, old, "def lr_multiplier(progress):\n    if progress < WARMUP_RATIO\n")
    line = TRAIN[:TRAIN.index(old)].count("\n") + 2
    message = str(caught.value)
    assert f"line {line}" in message
    assert "not applied" in message and "unchanged" in message
    assert TRAIN == before == (ROOT / "trainer" / "train.py").read_bytes().decode("utf-8")


def test_replacement_that_parses_but_does_not_compile_is_refused():
    # ast.parse accepts a module-level return; compile() does not.
    with pytest.raises(EditError, match="'return' outside function"):
        replace_snippet(SMALL, "DEPTH = 8\n", "return 8\n")


def test_replacing_a_whole_function_keeps_everything_after_it():
    assert TRAIN.count(BLOCK_FORWARD) == 1
    new = ('    def forward(self, x, ve, cos, sin, window):\n'
           '        # pre-norm residual blocks, scaled\n'
           '        x = x + self.attn(norm(x), ve, cos, sin, window)\n'
           '        x = x + self.mlp(norm(x))\n'
           '        return x\n')
    result = replace_snippet(TRAIN, BLOCK_FORWARD, new)
    at = TRAIN.index(BLOCK_FORWARD)
    tail = TRAIN[at + len(BLOCK_FORWARD):]
    assert len(result.text) == len(TRAIN) - len(BLOCK_FORWARD) + len(new)
    assert result.text.endswith(tail)
    assert result.text.endswith('if __name__ == "__main__":\n    main()\n')
    assert result.text.count("\n") == TRAIN.count("\n") + 2
    assert (result.first_line, result.last_line) == (TRAIN[:at].count("\n") + 1, TRAIN[:at].count("\n") + 5)
    ast.parse(result.text)


def test_new_text_without_a_final_newline_does_not_join_the_next_line():
    result = replace_snippet(SMALL, "DEPTH = 8\n", "DEPTH = 9")
    assert result.text == SMALL.replace("DEPTH = 8\n", "DEPTH = 9\n")


def test_new_text_with_an_extra_final_newline_adds_no_blank_line():
    result = replace_snippet(SMALL, "DEPTH = 8", "DEPTH = 9\n")
    assert result.text == SMALL.replace("DEPTH = 8\n", "DEPTH = 9\n")


def test_the_files_final_newline_is_kept_when_the_last_lines_are_replaced():
    result = replace_snippet(SMALL, "print(f(LR), g(DEPTH))\n", "print(f(LR))")
    assert result.text.endswith("print(f(LR))\n")


def test_deleting_lines_works():
    result = replace_snippet(SMALL, "DEPTH = 8\n", "")
    assert result.text == SMALL.replace("DEPTH = 8\n", "")
    assert result.first_line == result.last_line == 3


def test_empty_snippet_is_refused():
    for old in ("", "  \n"):
        with pytest.raises(EditError, match="empty"):
            replace_snippet(SMALL, old, "x = 1\n")


def test_identical_replacement_is_refused_as_no_change():
    with pytest.raises(EditError, match="no change"):
        replace_snippet(SMALL, "DEPTH = 8", "DEPTH = 8")


# --- numbered -----------------------------------------------------------------------------

def test_numbered_shows_the_range_with_right_aligned_numbers_and_a_footer():
    total = TRAIN.count("\n")
    shown = numbered(TRAIN, 8, 11).split("\n")
    assert shown[:4] == [f"{n:>3}\t{TRAIN.split(chr(10))[n - 1]}" for n in range(8, 12)]
    assert shown[4] == f"(lines 8-11 of {total})"


def test_numbered_whole_small_file_has_no_footer():
    shown = numbered(SMALL)
    assert shown.split("\n")[0] == ' 1\t"""A small program."""'
    assert "(lines" not in shown
    assert len(shown.split("\n")) == SMALL.count("\n")


def test_numbered_clamps_start_end_and_max_lines():
    total = TRAIN.count("\n")
    assert numbered(TRAIN, total - 1, total + 50).endswith(f"(lines {total - 1}-{total} of {total})")
    assert numbered(TRAIN, -5, 2).endswith(f"(lines 1-2 of {total})")
    assert numbered(TRAIN, 10, max_lines=5).endswith(f"(lines 10-14 of {total})")
    assert numbered(TRAIN).endswith(f"(lines 1-400 of {total})")


def test_numbered_refuses_a_start_past_the_end_naming_the_length():
    total = TRAIN.count("\n")
    with pytest.raises(EditError, match=f"has {total} lines"):
        numbered(TRAIN, total + 1)


def test_numbered_strips_carriage_returns():
    assert numbered("a = 1\r\nb = 2\r\n") == "1\ta = 1\n2\tb = 2"


# --- hyperparameters ----------------------------------------------------------------------

def test_hyperparameters_reads_the_real_block_with_values_and_source():
    found = hyperparameters(TRAIN)
    lines = TRAIN.split("\n")
    assert found["MATRIX_LR"] == Hyper("MATRIX_LR", "0.04", 0.04, lines.index("MATRIX_LR = 0.04  # Muon, for the blocks' matrices") + 1)
    assert found["WINDOW_PATTERN"].value_source == '"SSSL"' and found["WINDOW_PATTERN"].value == "SSSL"
    assert found["ROPE_BASE"].value == 10_000
    assert found["ADAM_BETAS"].value == (0.8, 0.95)
    assert found["DEPTH"].value_source == '{"full": 8, "tiny": 3}[PROFILE]' and found["DEPTH"].value is None
    assert found["COMPILE"].value is None
    # Computed at run time, not set: left out; so are lower-case and function-local names.
    for name in ("DEVICE", "PROFILE", "T_PROCESS_START", "ATTENTION_BACKEND", "_FA3", "TIME_BUDGET"):
        assert name not in found


def test_hyperparameters_evaluates_constant_arithmetic_and_skips_names_bound_twice():
    found = hyperparameters("A = 2**19\nB = 1\nB = 2\nC: float = -3e-4 * 2\n")
    assert found["A"].value == 524288
    assert found["C"].value == pytest.approx(-6e-4)
    assert "B" not in found


# --- set_hyperparameters ------------------------------------------------------------------

def test_set_hyperparameters_changes_only_the_value_and_keeps_the_inline_comment():
    result = set_hyperparameters(TRAIN, {"MATRIX_LR": "0.05"})
    old_line = "MATRIX_LR = 0.04  # Muon, for the blocks' matrices"
    assert result.text == TRAIN.replace(old_line, "MATRIX_LR = 0.05  # Muon, for the blocks' matrices")
    line = TRAIN.split("\n").index(old_line) + 1
    assert (result.first_line, result.last_line) == (line, line)
    assert hyperparameters(result.text)["MATRIX_LR"].value == 0.05


def test_set_hyperparameters_sets_several_values_at_once_including_a_string():
    result = set_hyperparameters(TRAIN, {"WINDOW_PATTERN": '"SSL"', "DEPTH": '{"full": 10, "tiny": 3}[PROFILE]'})
    found = hyperparameters(result.text)
    assert found["WINDOW_PATTERN"].value == "SSL"
    assert found["DEPTH"].value_source == '{"full": 10, "tiny": 3}[PROFILE]'
    assert "# per layer: S = short sliding window" in result.text.split("\n")[found["WINDOW_PATTERN"].line - 1]
    assert sum(1 for line in result.diff.splitlines() if line.startswith(("+", "-"))) == 2 + 4


def test_set_hyperparameters_unknown_name_suggests_the_close_match():
    with pytest.raises(EditError) as caught:
        set_hyperparameters(TRAIN, {"MATRIX_LRR": "0.05"})
    message = str(caught.value)
    assert "did you mean MATRIX_LR" in message
    assert "Known: DEPTH, ASPECT_RATIO" in message


def test_set_hyperparameters_is_all_or_nothing():
    with pytest.raises(EditError, match="WARMUP_RATI0"):
        set_hyperparameters(TRAIN, {"MATRIX_LR": "0.05", "WARMUP_RATI0": "0.1"})


def test_set_hyperparameters_refuses_a_value_that_is_not_an_expression():
    for value in ("MATRIX_LR = 0.05", "0.05\nDEPTH = 2", "0.05)"):
        with pytest.raises(EditError, match="not a Python expression"):
            set_hyperparameters(TRAIN, {"MATRIX_LR": value})


def test_set_hyperparameters_refuses_an_unquoted_string_with_the_quoting_hint():
    with pytest.raises(EditError, match="quote it"):
        set_hyperparameters(TRAIN, {"WINDOW_PATTERN": "SSSL"})


def test_set_hyperparameters_refuses_a_value_with_a_comment():
    with pytest.raises(EditError, match="comment"):
        set_hyperparameters(TRAIN, {"MATRIX_LR": "0.05  # faster"})


def test_set_hyperparameters_refuses_a_computed_name_pointing_to_snippet_replacement():
    with pytest.raises(EditError, match="snippet replacement"):
        set_hyperparameters(TRAIN, {"DEVICE": '"cpu"'})


def test_set_hyperparameters_refuses_no_change():
    with pytest.raises(EditError, match="no change"):
        set_hyperparameters(TRAIN, {"MATRIX_LR": "0.04"})


def test_set_hyperparameters_on_a_crlf_file_keeps_crlf():
    text = SMALL.replace("\n", "\r\n")
    result = set_hyperparameters(text, {"LR": "[0.1,\n      0.2]"})
    assert "LR = [0.1,\r\n      0.2]  # learning rate\r\nDEPTH = 8\r\n" in result.text
    assert (result.first_line, result.last_line) == (2, 3)


def test_set_hyperparameters_keeps_a_second_statement_on_the_same_line():
    result = set_hyperparameters("A = 1; B = 2  # two\n", {"A": "3"})
    assert result.text == "A = 3; B = 2  # two\n"


# --- normalized_change --------------------------------------------------------------------

def test_normalized_change_is_equal_for_equivalent_edits():
    by_tool = set_hyperparameters(TRAIN, {"MATRIX_LR": "0.05"}).text
    by_hand = replace_snippet(TRAIN, "MATRIX_LR = 0.04  # Muon, for the blocks' matrices\n", "MATRIX_LR = 5e-2\n").text
    spelled = TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.050")
    key = normalized_change(TRAIN, by_tool)
    assert key == "+ MATRIX_LR = 0.05\n- MATRIX_LR = 0.04"
    assert normalized_change(TRAIN, by_hand) == key == normalized_change(TRAIN, spelled)


def test_normalized_change_is_equal_for_the_same_edit_of_a_function_written_differently():
    a = replace_snippet(TRAIN, BLOCK_FORWARD, BLOCK_FORWARD.replace("return x + self.mlp(norm(x))", "return x + 0.5*self.mlp( norm(x) )")).text
    b = replace_snippet(TRAIN, BLOCK_FORWARD, BLOCK_FORWARD.replace("return x + self.mlp(norm(x))", "return (x + 0.50 * self.mlp(norm(x)))  # halved")).text
    assert normalized_change(TRAIN, a) == normalized_change(TRAIN, b)
    assert normalized_change(TRAIN, a) == ("+ Block.forward: return x + 0.5 * self.mlp(norm(x))\n"
                                           "- Block.forward: return x + self.mlp(norm(x))")


def test_normalized_change_differs_for_different_values():
    one = set_hyperparameters(TRAIN, {"MATRIX_LR": "0.05"}).text
    other = set_hyperparameters(TRAIN, {"MATRIX_LR": "0.06"}).text
    assert normalized_change(TRAIN, one) != normalized_change(TRAIN, other)
    assert normalized_change(TRAIN, one) != ""


def test_normalized_change_is_empty_for_whitespace_and_comment_only_edits():
    edited = (TRAIN.replace("MATRIX_LR = 0.04  # Muon, for the blocks' matrices", "MATRIX_LR = 0.040  # Muon (matrices)")
              .replace("DEPTH = {\"full\": 8, \"tiny\": 3}[PROFILE]", "DEPTH = {'full': 8,\n         'tiny': 3}[PROFILE]")
              .replace("ROPE_BASE = 10_000", "ROPE_BASE = 10000")
              .replace("def norm(x):\n", "# a comment\ndef norm(x):\n\n"))
    assert edited != TRAIN
    assert normalized_change(TRAIN, edited) == ""
    assert normalized_change(TRAIN, TRAIN) == ""


def test_normalized_change_does_not_depend_on_statement_order_of_the_edits():
    both = set_hyperparameters(TRAIN, {"MATRIX_LR": "0.05", "DEPTH": '{"full": 9, "tiny": 3}[PROFILE]'}).text
    step = set_hyperparameters(TRAIN, {"DEPTH": '{"full": 9, "tiny": 3}[PROFILE]'}).text
    step = set_hyperparameters(step, {"MATRIX_LR": "0.05"}).text
    assert normalized_change(TRAIN, both) == normalized_change(TRAIN, step)


def test_normalized_change_refuses_text_that_does_not_parse():
    with pytest.raises(EditError, match="does not parse"):
        normalized_change(SMALL, SMALL + "def (\n")
