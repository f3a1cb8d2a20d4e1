#!/usr/bin/env python3
"""Mutation testing of the cache's Lua scripts, which cargo-mutants does not mutate (they are string
literals): each mutant below breaks one rule of the lease protocol in `service/src/cache/scripts.rs`;
the tests that cover the protocol must fail for every one. Not run in CI (a few minutes per mutant).

    python3 ci/mutate-lua.py            # every mutant
    python3 ci/mutate-lua.py 3 5        # some of them

The file is restored after each mutant, and on Ctrl-C.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "service/src/cache/scripts.rs"
TESTS = ["cargo", "test", "-q", "-p", "service", "--test", "cache_protocol", "--test", "api"]

# (what the mutant breaks, the text replaced, its replacement); each text occurs once in the file.
MUTANTS = [
    (
        "WRITE lands in an absent key (the service before leases)",
        "if current == false then\n  return -1\nend",
        "if current == false then\n  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n  return 1\nend",
    ),
    (
        "WRITE accepts any lease, not only the writer's own",
        "if ARGV[4] ~= '' and current == 'lease:' .. ARGV[4] then",
        "if ARGV[4] ~= '' and string.sub(current, 1, 6) == 'lease:' then",
    ),
    (
        "WRITE replaces an entry of the same version",
        "if cached < tonumber(ARGV[1]) then",
        "if cached <= tonumber(ARGV[1]) then",
    ),
    (
        "WRITE replaces a newer entry",
        "if cached < tonumber(ARGV[1]) then",
        "if cached > tonumber(ARGV[1]) then",
    ),
    (
        "the updater leaves a pending lease in place",
        "if ARGV[4] == '' then\n  redis.call('DEL', KEYS[1])\n  return 2\nend",
        "if ARGV[4] == '' then\n  return 2\nend",
    ),
    (
        "a fill whose lease was taken over writes anyway",
        "  return 2\nend\nreturn 3",
        "  return 2\nend\nredis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\nreturn 1",
    ),
    (
        "WRITE sets no time to live",
        "if ARGV[4] ~= '' and current == 'lease:' .. ARGV[4] then\n  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])",
        "if ARGV[4] ~= '' and current == 'lease:' .. ARGV[4] then\n  redis.call('SET', KEYS[1], ARGV[2])",
    ),
    (
        "LEASE is granted over an entry",
        "if current == false or (ARGV[3] ~= '' and current == ARGV[3]) then",
        "if true then",
    ),
    (
        "LEASE never replaces an unreadable value",
        "if current == false or (ARGV[3] ~= '' and current == ARGV[3]) then",
        "if current == false then",
    ),
    (
        "a lease never expires",
        "redis.call('SET', KEYS[1], 'lease:' .. ARGV[1], 'PX', ARGV[2])",
        "redis.call('SET', KEYS[1], 'lease:' .. ARGV[1])",
    ),
]


def main() -> int:
    chosen = [int(a) for a in sys.argv[1:]] or range(1, len(MUTANTS) + 1)
    original = SCRIPTS.read_text()
    missed = []
    try:
        for number in chosen:
            what, old, new = MUTANTS[number - 1]
            if original.count(old) != 1:
                print(f"mutant {number} ({what}): its text is not in the file once; update this list")
                return 2
            SCRIPTS.write_text(original.replace(old, new))
            result = subprocess.run(TESTS, cwd=ROOT, capture_output=True, text=True)
            caught = result.returncode != 0
            # cargo test -q lists the failing tests, indented, after the last "failures:".
            listing = result.stdout.rsplit("failures:", 1)[-1] if caught else ""
            failed = [line.strip() for line in listing.splitlines() if line.startswith("    ")]
            print(f"mutant {number}: {what}: {'caught' if caught else 'MISSED'}")
            for line in failed[:5]:
                print(f"    {line}")
            if not caught:
                missed.append(number)
    finally:
        SCRIPTS.write_text(original)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} mutants caught" + (f"; missed: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
