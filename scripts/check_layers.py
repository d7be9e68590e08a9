#!/usr/bin/env python3
"""Checks that qkv's includes point one way (docs/architecture.md): every quoted include of a
library's source must name the library itself or one below it. Prints each violation as
FILE:LINE and exits 1 if there is any.

    python3 scripts/check_layers.py
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Each library and the libraries it may include (itself included).
BELOW = {
    "lib/numerics": {"lib/numerics"},
    "lib/text": {"lib/text", "lib/numerics"},
    "lib/plot": {"lib/plot", "lib/numerics"},
    "autograd": {"autograd", "lib/numerics"},
    "layers": {"layers", "autograd", "lib/numerics"},
    "optim": {"optim", "layers", "autograd", "lib/numerics"},
    "models": {"models", "optim", "layers", "autograd", "lib/text", "lib/numerics"},
    "train": {"train", "models", "optim", "layers", "autograd", "lib/text", "lib/plot", "lib/numerics"},
    "study": {"study", "train", "models", "optim", "layers", "autograd", "lib/text", "lib/plot", "lib/numerics"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def library_of(path):
    """The library a quoted include path (or a source path) belongs to, or None."""
    for name in sorted(BELOW, key=len, reverse=True):
        if path == name or path.startswith(name + "/"):
            return name
    return None


violations = []
checked = 0
for library, allowed in BELOW.items():
    for source in sorted((ROOT / library).rglob("*")):
        if source.suffix not in (".hpp", ".cpp"):
            continue
        relative = source.relative_to(ROOT).as_posix()
        if library_of(relative) != library:  # a file of a deeper library (lib/text under lib)
            continue
        checked += 1
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            match = INCLUDE.match(line)
            if not match:
                continue
            target = library_of(match.group(1))
            if target is not None and target not in allowed:
                violations.append(f"{relative}:{number}: {library} includes {match.group(1)} ({target} is above it)")

for violation in violations:
    print(violation)
print(f"check_layers: {checked} files, {len(violations)} includes pointing up")
sys.exit(1 if violations else 0)
