#!/usr/bin/env python3
"""A fixed document set from Debian's package descriptions (apt's Translation-en).

Each document is a package's long description; its synopsis (the one-line summary)
is kept as a natural query for it. Every 25th package of bookworm main, by name, so
the set is fixed; a copy is committed (bench/data/debian_docs.jsonl) and the
benchmarks read that, so the numbers stay comparable.

usage: make_debian_docs.py TRANSLATION_EN_FILE OUT_JSONL   (decompress the .lz4 first)
"""
import json
import sys


def packages(text):
    entry = {}
    lines = []
    for line in text.splitlines() + [""]:
        if not line:
            if entry:
                yield entry["Package"], entry["synopsis"], "\n".join(lines).strip()
            entry, lines = {}, []
        elif line.startswith("Package: "):
            entry["Package"] = line[9:]
        elif line.startswith("Description-en: "):
            entry["synopsis"] = line[16:]
        elif line.startswith(" ") and entry:
            lines.append("" if line.strip() == "." else line.strip())


def main(src, out):
    pkgs = sorted(packages(open(src, encoding="utf-8").read()))
    chosen = [p for i, p in enumerate(pkgs) if i % 25 == 0 and len(p[2]) >= 80]
    with open(out, "w", encoding="utf-8") as f:
        for name, synopsis, body in chosen:
            f.write(json.dumps({"package": name, "query": synopsis, "body": body}, ensure_ascii=False) + "\n")
    print(f"{len(chosen)} documents of {len(pkgs)} packages -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
