#!/usr/bin/env python3
"""Write the CRDs generated from benchop.api.models into crds/ and charts/benchop/crds/.

python hack/gen_crds.py          # regenerate
python hack/gen_crds.py --check  # exit 1 naming each stale or missing file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchop.api.crdgen import render_crds

ROOT = Path(__file__).resolve().parent.parent
TARGET_DIRS = (ROOT / "crds", ROOT / "charts" / "benchop" / "crds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    rendered = render_crds()
    stale = []
    for directory in TARGET_DIRS:
        for name, text in rendered.items():
            path = directory / name
            current = path.read_text() if path.exists() else None
            if current == text:
                continue
            if args.check:
                stale.append(path.relative_to(ROOT))
            else:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"stale: {path} (run: python hack/gen_crds.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
