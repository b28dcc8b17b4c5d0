#!/usr/bin/env python3
"""Code footprint of one iteration of a loop, from two callgrind runs.

The instructions a loop runs on every iteration, grouped into the 64-byte
lines of code that hold them: how much code one evaluation touches (what
has to come back into the instruction cache when the network stack ran in
between), and per function how densely its touched lines are used.

    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file=/tmp/a.out \\
        target/release/examples/eval_loop_jwt 1000
    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file=/tmp/b.out \\
        target/release/examples/eval_loop_jwt 2000
    python3 benches/footprint.py /tmp/a.out /tmp/b.out 1000 [TOP]

The third argument is the difference in iterations between the two runs;
an instruction counts when it ran at least once per extra iteration.
"""

import collections
import re
import sys

LINE = 64


def load(path):
    """Instructions executed per address, and the function of each."""
    cost = collections.Counter()
    function_of = {}
    names = {}
    current = None
    addr = 0
    after_call = False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("fn="):
                    current = names.get(m.group(1))
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                after_call = True
                continue
            first = line.split()[0]
            if first.startswith("0x"):
                addr = int(first, 16)
            elif first.startswith("+"):
                addr += int(first[1:])
            elif first.startswith("-"):
                addr -= int(first[1:])
            elif first != "*":
                continue
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if len(parts) > 2:
                cost[addr] += int(parts[2])
                function_of[addr] = current
    return cost, function_of


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    small, _ = load(sys.argv[1])
    big, function_of = load(sys.argv[2])
    extra = int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    per_iteration = {a: (big[a] - small.get(a, 0)) / extra for a in big}
    hot = {a: n for a, n in per_iteration.items() if n >= 0.99}
    lines = collections.defaultdict(set)
    instructions = collections.Counter()
    for a, n in hot.items():
        f = function_of.get(a) or "?"
        lines[f].add(a // LINE)
        instructions[f] += n
    every = set().union(*lines.values()) if lines else set()
    print(
        f"per iteration: {sum(hot.values()):.0f} instructions on {len(every)} lines "
        f"({len(every) * LINE / 1024:.1f} KiB of code)"
    )
    print(" lines  instructions  per line  function")
    for f, ls in sorted(lines.items(), key=lambda x: -len(x[1]))[:top]:
        n = instructions[f]
        print(f"{len(ls):6d}  {n:12.0f}  {n / len(ls):8.1f}  {f[:100]}")


if __name__ == "__main__":
    main()
