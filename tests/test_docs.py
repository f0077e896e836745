"""The documentation's examples run: doctests of the optimizer modules and every ```python block of
docs/optim.md."""

import doctest
import re
from pathlib import Path

import pytest

import sharplab.optim.functional
import sharplab.optim.sam

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("module", [sharplab.optim.sam, sharplab.optim.functional])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def code_blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(code_blocks("optim.md"))))
def test_optim_guide_examples_run(index):
    exec(compile(code_blocks("optim.md")[index], f"docs/optim.md[{index}]", "exec"), {})
