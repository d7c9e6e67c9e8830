"""Write docs/openapi.json: the HTTP API's OpenAPI schema, generated from the app itself
(`rs_edit.service.app.openapi_text`: default settings, sorted keys), written atomically.

    .venv/bin/python scripts/write_openapi.py           # (re)write docs/openapi.json
    .venv/bin/python scripts/write_openapi.py --check   # exit 1 when the file is out of date

tests/backend/test_openapi.py fails while the file and the app disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rs_edit.files import write_text_atomic
from rs_edit.service.app import openapi_text

TARGET = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    parser.add_argument("--output", type=Path, default=TARGET, help=f"default: {TARGET}")
    args = parser.parse_args(argv)
    text = openapi_text()
    current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
    if args.check:
        if current != text:
            print(f"{args.output} is out of date: run scripts/write_openapi.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    if current == text:
        print(f"{args.output} is up to date")
        return 0
    write_text_atomic(args.output, text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
