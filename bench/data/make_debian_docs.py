#!/usr/bin/env python3
"""Document sets from Debian's package descriptions (apt's Translation-en).

Each document is a package's long description; its synopsis (the one-line summary)
is kept as a natural query for it, and that package is the query's one relevant
document. Packages of bookworm main are sorted by name and every N-th is kept (N = 1
keeps them all), so a set is fixed by N. Descriptions shorter than 80 characters are
left out, and so is a package whose description is shared with an earlier one (a query
with two equally right answers measures nothing).

Committed sets (the benchmarks and the demo read these, so numbers stay comparable):
  debian_docs.jsonl          N = 25, 2,491 documents (bench/embed)
  debian_docs_5k.jsonl.gz    N = 10, the demo's corpus and the retrieval-quality set
The whole corpus (N = 1, about 54,000) is built at benchmark time by
bench/data/debian_corpus.sh from apt's lists.

usage: make_debian_docs.py TRANSLATION_EN_FILE OUT_JSONL [N]   (decompress the .lz4 first)
"""
import gzip
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


def main(src, out, every="25"):
    every = int(every)
    pkgs = sorted(packages(open(src, encoding="utf-8").read()))
    seen = set()
    chosen = []
    for i, p in enumerate(pkgs):
        if i % every or len(p[2]) < 80:
            continue
        if every == 25:  # the set committed before duplicates were dropped
            chosen.append(p)
        elif p[2] not in seen:
            seen.add(p[2])
            chosen.append(p)
    opener = gzip.open if out.endswith(".gz") else open
    with opener(out, "wt", encoding="utf-8") as f:
        for name, synopsis, body in chosen:
            f.write(json.dumps({"package": name, "query": synopsis, "body": body}, ensure_ascii=False) + "\n")
    print(f"{len(chosen)} documents of {len(pkgs)} packages -> {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
