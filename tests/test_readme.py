"""The README's SDK example runs as written (from the repository root, on the embedded default: the demo)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_sdk_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- sdk-example -->\s*```python\n(.*?)```\s*<!-- /sdk-example -->", text, re.S)
    assert block, "README.md lost its SDK example markers"
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out):
            exec(compile(block.group(1), "README.md (sdk example)", "exec"), {})
    finally:
        os.chdir(cwd)
    lines = out.getvalue().splitlines()
    assert len(lines) == 25  # one second of audio -> 25 frames
    assert lines[0] == "0 0.0 (128, 128, 3) (640,)" and lines[-1].startswith("24 0.96 ")
