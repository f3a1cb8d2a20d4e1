"""One RPC's figures from a goose JSON report of the load test (loadtest/{overload,write-path}.sh).

Usage: python3 loadtest/goose_summary.py REPORT.json RPC
Prints: calls served per second, calls not OK, calls shed (RESOURCE_EXHAUSTED, recorded by the driver as
"RPC, shed") per second, and the served calls' p50, p99 and maximum latency in milliseconds.
"""

import json
import sys


def percentile(times, fraction):
    """The nearest-rank percentile of goose's histogram {microseconds: count}, in milliseconds."""
    total = sum(times.values())
    seen = 0
    for time, count in sorted((int(t), c) for t, c in times.items()):
        seen += count
        if seen >= fraction * total:
            return time / 1000
    return float("nan")


def main():
    path, rpc = sys.argv[1:]
    report = json.load(open(path))
    seconds = report["raw_metrics"]["duration"]
    requests = report["raw_metrics"]["requests"]
    empty = {"raw_data": {"counter": 0, "times_us": {}, "maximum_time_us": 0}, "fail_count": 0}
    served = requests.get(f"gRPC {rpc}", empty)
    shed = requests.get(f"gRPC {rpc}, shed", empty)
    times = served["raw_data"]["times_us"]
    print(
        f"{served['raw_data']['counter'] / seconds:.0f} {served['fail_count']} "
        f"{shed['raw_data']['counter'] / seconds:.0f} {percentile(times, 0.5):.1f} "
        f"{percentile(times, 0.99):.1f} {served['raw_data'].get('maximum_time_us', 0) / 1000:.0f}"
    )


main()
