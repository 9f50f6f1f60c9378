"""Wall time per stage of a `dvc repro`, read off DVC's own output.

    python bench/repro_times.py                             # `dvc repro` of the whole pipeline, then the table
    python bench/repro_times.py --json times.json -- analyze-layers     # any `dvc repro` arguments after --

Runs `dvc repro ARGS` in this folder and passes its output through. A stage's time runs from the line where DVC
starts it ("Running stage 'NAME'", or a cached or unchanged stage's line) to the next such line, or to the end
for the last one; it includes DVC's own hashing and lock-file writes around the command. Prints the stages with
their seconds and share of the total, and writes them as JSON with --json. Exits with dvc's status. Run it alone:
a timing taken beside other torch work is not one.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

# the lines with which `dvc repro` starts a stage: it runs it, restores it from the run-cache, or finds it unchanged
START = re.compile(r"^(?:Running stage '(?P<ran>[^']+)'|Stage '(?P<cached>[^']+)' is cached"
                   r"|Stage '(?P<same>[^']+)' didn't change)")


@dataclass
class StageTime:
    stage: str
    how: str  # ran | cached | unchanged
    seconds: float


def stage_times(lines: list[tuple[float, str]], end: float) -> list[StageTime]:
    """(time, line) pairs of dvc's output, and the time it ended: one StageTime per stage, in order."""
    starts = [(t, m) for t, line in lines if (m := START.match(line.strip()))]
    times = []
    for i, (t, m) in enumerate(starts):
        until = starts[i + 1][0] if i + 1 < len(starts) else end
        how = {"ran": "ran", "cached": "cached", "same": "unchanged"}[m.lastgroup]
        times.append(StageTime(m.group(m.lastgroup), how, until - t))
    return times


def table(times: list[StageTime]) -> str:
    total = sum(t.seconds for t in times) or 1.0
    rows = [f"| {t.stage} | {t.how} | {t.seconds:.0f} | {t.seconds / total:.0%} |" for t in times]
    return "\n".join(["| stage | how | seconds | share |", "|---|---|---|---|", *rows,
                      f"| total | | {sum(t.seconds for t in times):.0f} | |"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the times to this file")
    ap.add_argument("repro_args", nargs="*", help="arguments for `dvc repro` (after --)")
    args = ap.parse_args(argv)

    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(["dvc", "repro", *args.repro_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:  # passed through as it comes, each line timed on arrival
        sys.stdout.write(line)
        lines.append((time.monotonic(), line))
    code = proc.wait()
    times = stage_times(lines, time.monotonic())
    print(table(times))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"returncode": code, "stages": [asdict(t) for t in times]}, f, indent=2)
    return code


if __name__ == "__main__":
    sys.exit(main())
