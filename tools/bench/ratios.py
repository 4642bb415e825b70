"""Prints a ratio table from two benchmark outputs that share labels (`LABEL  SECONDS s` lines).

    python3 tools/bench/ratios.py OURS.txt THEIRS.txt
Used by the tools/bench scripts, which write both sides of one run to files.
"""

import re
import sys

LINE = re.compile(r"^(?P<label>[a-z][\w .×x-]*?)\s+(?P<secs>[0-9]+\.[0-9]+) s$")


def read(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                out[m["label"].strip()] = float(m["secs"])
    return out


def main():
    ours, theirs = read(sys.argv[1]), read(sys.argv[2])
    print("| measurement | LatentFlow | PyTorch | LatentFlow / PyTorch |")
    print("|---|---|---|---|")
    for label, secs in ours.items():
        if label in theirs:
            print(f"| {label} | {secs:.3f} s | {theirs[label]:.3f} s | {secs / theirs[label]:.2f}× |")


if __name__ == "__main__":
    main()
