"""Copy the record schemas shipped in edgeclf/schemas/ to docs/schemas/, where app teams and CI
scripts find them without installing edgeclf. tests/test_records.py checks the two are the same.

Usage: python tools/publish_schemas.py
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "edgeclf" / "schemas"
DOCS = REPO / "docs" / "schemas"


def main() -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    for path in sorted(SOURCE.glob("*.schema.json")):
        (DOCS / path.name).write_text(path.read_text())
        print(f"docs/schemas/{path.name}")


if __name__ == "__main__":
    main()
