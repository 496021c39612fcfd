#!/usr/bin/env python3
"""Freshness by stage, from two scrapes of the services' /metrics (`make bench`, around a freshness probe).

Usage: bench_stages.py <before.prom> <after.prom> <workload> <key suffix>

Reads the `_input_age_seconds` histograms of the processor and the materializer (the age of the newest input,
now minus its broker log-append time, at each stage: docs/operations.md) in both scrapes, takes the difference
(the samples recorded between them) and prints one JSON object: for each stage, `stage_<stage>_p50_ms<suffix>`,
`..._p99_ms<suffix>` and `..._samples<suffix>`. Quantiles are interpolated linearly within a bucket, as
PromQL's histogram_quantile does; a quantile in the last (+Inf) bucket is reported as the last finite bound.
"""
import json
import re
import sys

# (metric, stage label) -> the report's stage name, in pipeline order.
STAGES = [
    ("analytics_processor_input_age_seconds", "read", "processor_read"),
    ("analytics_processor_input_age_seconds", "stored", "processor_stored"),
    ("analytics_processor_input_age_seconds", "emitted", "processor_emitted"),
    ("analytics_materializer_input_age_seconds", "read", "materializer_read"),
    ("analytics_materializer_input_age_seconds", "postgres", "materializer_postgres"),
    ("analytics_materializer_input_age_seconds", "redis", "materializer_redis"),
]
LINE = re.compile(r'^(\w+)_bucket\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def buckets(path, workload):
    """{(metric, stage): {le: cumulative count}} of one scrape."""
    out = {}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2)))
        if labels.get("workload") != workload or "stage" not in labels:
            continue
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        out.setdefault((m.group(1), labels["stage"]), {})[le] = float(m.group(3))
    return out


def quantile(q, cumulative):
    """histogram_quantile over [(le, cumulative count)], sorted by le; None without samples."""
    total = cumulative[-1][1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def main():
    before_path, after_path, workload, suffix = sys.argv[1:5]
    before, after = buckets(before_path, workload), buckets(after_path, workload)
    out = {}
    for metric, stage, name in STAGES:
        now = after.get((metric, stage), {})
        then = before.get((metric, stage), {})
        diff = sorted((le, c - then.get(le, 0.0)) for le, c in now.items())
        samples = diff[-1][1] if diff else 0
        for q in (0.5, 0.99):
            v = quantile(q, diff)
            out[f"stage_{name}_p{round(q * 100)}_ms{suffix}"] = None if v is None else round(v * 1000, 1)
        out[f"stage_{name}_samples{suffix}"] = int(samples)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
