"""Reports product modules over MAX_MODULE lines and functions over MAX_FUNCTION lines; exits 1 if any.

Run by `.ci/run`. Tests are not product code and are not checked.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE = 600
MAX_FUNCTION = 100
PACKAGES = ("envs", "rollouts", "worldmodel", "policies", "avatars", "app", "benchmarks", "configs")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    over = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            text = path.read_text()
            rel = path.relative_to(root)
            n = len(text.splitlines())
            if n > MAX_MODULE:
                over.append(f"{rel}: {n} lines (module limit {MAX_MODULE})")
            for node in ast.walk(ast.parse(text, str(rel))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION:
                        over.append(f"{rel}:{node.lineno} {node.name}: {length} lines (function limit {MAX_FUNCTION})")
    for line in over:
        print(line)
    if over:
        print(f"check_sizes: {len(over)} over the limits; split them where they do several things", file=sys.stderr)
        return 1
    print(f"check_sizes: every module <= {MAX_MODULE} lines, every function <= {MAX_FUNCTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
