"""docs/reliability.md's table of faults is generated from the fault tests themselves.

Every test marked ``@pytest.mark.fault(fault="...", outcome="...")`` is one row
``| fault | what the user sees | test |``; the table in the doc must be exactly the rendered rows, so
a fault test cannot be added, renamed or changed without the table following it.  Regenerate with
``python tests/test_fault_table.py --write``.
"""

import ast
import sys
from pathlib import Path

TESTS = Path(__file__).parent
DOC = TESTS.parent / "docs" / "reliability.md"
BEGIN = "<!-- fault table: generated from the tests' @pytest.mark.fault marks (tests/test_fault_table.py) -->"
END = "<!-- end of the fault table -->"


def fault_rows() -> list:
    """``(fault, outcome, "tests/<file>::<test>")`` of every marked test, by file and line."""
    rows = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                        and decorator.func.attr == "fault"):
                    values = {k.arg: ast.literal_eval(k.value) for k in decorator.keywords}
                    rows.append((values["fault"], values["outcome"], f"tests/{path.name}::{node.name}"))
    return rows


def render_table(rows: list) -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = [BEGIN, "", "| fault | what the user sees | test |", "|---|---|---|"]
    lines += [f"| {cell(fault)} | {cell(outcome)} | `{test}` |" for fault, outcome, test in rows]
    return "\n".join([*lines, "", END])


def _current_table(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def test_every_fault_test_is_a_row_of_the_reliability_table():
    rows = fault_rows()
    assert len(rows) >= 8 and len({test for _, _, test in rows}) == len(rows)
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} has no generated fault table"
    assert _current_table(text) == render_table(rows), "regenerate with: python tests/test_fault_table.py --write"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    text = DOC.read_text()
    DOC.write_text(text.replace(_current_table(text), render_table(fault_rows())))
