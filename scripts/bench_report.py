#!/usr/bin/env python3
"""Merges the measurements of scripts/bench.sh into target/bench/results.json
(flat keys, numbers only) and regenerates docs/benchmarks.md."""
import datetime
import json
import pathlib
import sys

out, cores, quick, duration = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
# "promotions" or "widgets": only that section ran (make bench-promotions, make bench-widgets): its figures replace
# those of its two blocks in docs/benchmarks.md and in results.json; every other figure stays that of the last full run.
only = sys.argv[5] if len(sys.argv) > 5 else ""
root = out.parent.parent
raw = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.stem != "results"}
r = {}


def put(key, value):
    if value is not None:
        r[key] = round(float(value), 3)


if only:
    raw = {only: raw.get(only, {})}
state = raw.get("core_state", {})
criterion = root / "target/criterion/core/apply/new/estimates.json"
est = json.loads(criterion.read_text()) if criterion.exists() and not only else None
put("core_events", state.get("core_events"))
if est and state.get("core_events"):
    put("core_events_per_sec_per_core", state["core_events"] / (est["mean"]["point_estimate"] / 1e9))
put("state_bytes_per_user_hour", state.get("state_bytes_per_user_hour"))
live = raw.get("state_live", {})
if live.get("live_state_user_hours"):
    put("live_state_bytes_per_user_hour", live["live_state_bytes"] / live["live_state_user_hours"])
for name in ["post_64", "post_256", "ceiling_post_64", "ceiling_post_256", "get_current", "get_old", "ceiling_get_64"]:
    w = raw.get(name, {})
    stem = {"ceiling_post_64": "post_ceiling", "ceiling_post_256": "post_ceiling", "ceiling_get_64": "get_ceiling"}.get(name)
    suffix = name.rsplit("_", 1)[1] if name.startswith(("post", "ceiling_post")) else ""
    if name.startswith("ceiling_get"):
        put("get_ceiling_rps", w.get("rps")); put("get_ceiling_p99_ms", w.get("p99_ms"))
        continue
    if stem:
        put(f"post_ceiling_rps_{suffix}", w.get("rps")); put(f"post_ceiling_p99_ms_{suffix}", w.get("p99_ms"))
        continue
    if name.startswith("post"):
        for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx", "socket_errors"]:
            put(f"post_{k}_{suffix}", w.get(k))
    else:
        which = name.split("_", 1)[1]
        for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx"]:
            key = f"get_{k}_{which}"
            put(key, w.get(k))
put("redis_benchmark_get_rps", raw.get("redis", {}).get("redis_benchmark_get_rps"))
put("broker_produce_msgs_per_sec", raw.get("broker", {}).get("broker_produce_msgs_per_sec"))
# closed-loop.rs prints its keys ready-made: post_closed_loop_{ceiling_rps,p50_ms,p99_ms,p999_ms,errors}_<in flight>.
for n in ["64", "256"]:
    for k, v in raw.get(f"closed_loop_{n}", {}).items():
        put(k, v)
inc = raw.get("increment_256", {})
for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx", "socket_errors"]:
    put(f"increment_{k}_256", inc.get(k))
for k, v in raw.get("increment_staleness", {}).items():
    put(k, v)
for k, v in raw.get("increment_rates", {}).items():
    put(k, v)
# The answers workload at 64 connections; bench.sh's setup prints its keys ready-made (answers_setup_*,
# answers_pool_keys_readable, answers_history_entries).
for op in ["create", "update", "get", "history"]:
    w = raw.get(f"answers_{op}_64", {})
    for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx", "socket_errors"]:
        put(f"answers_{op}_{k}_64", w.get(k))
for k, v in raw.get("answers_setup", {}).items():
    put(k, v)


def quotient(a, b):
    return r[a] / r[b] if r.get(a) is not None and r.get(b) else None


# The goals: a write's p99 within 2x the same run's POST /analytics p99, GET within 70 % of the GET ceiling.
put("answers_create_p99_over_post_p99_64", quotient("answers_create_p99_ms_64", "post_p99_ms_64"))
put("answers_update_p99_over_post_p99_64", quotient("answers_update_p99_ms_64", "post_p99_ms_64"))
put("answers_get_rps_over_ceiling_64", quotient("answers_get_rps_64", "get_ceiling_rps"))
# Time ranges (wrk), and one answer of each summarized by bench.sh (the ranges hold data).
for name, suffix in [("timeseries_48h", "48h"), ("aggregate_7d", "7d")]:
    w = raw.get(name, {})
    for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx", "socket_errors"]:
        put(f"{name.split('_')[0]}_{k}_{suffix}", w.get(k))
for name in ["range_timeseries", "range_aggregate"]:
    for k, v in raw.get(name, {}).items():
        put(k, v)
# live-probe.rs prints its keys ready-made: token_*, streams, streams_open_s, sse_*_{samples,p50_ms,p99_ms,max_ms}.
for k, v in raw.get("live", {}).items():
    put(k, v)
half = raw.get("post_half_load", {})
for k in ["rps", "target_rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx", "socket_errors"]:
    put(f"post_{k}_half_load", half.get(k))
for k in ["freshness_p50_ms", "freshness_p99_ms", "freshness_max_ms", "freshness_samples", "freshness_appended_samples",
          "freshness_appended_to_answered_p50_ms", "freshness_appended_to_answered_p99_ms",
          "freshness_appended_to_seen_p50_ms", "freshness_appended_to_seen_p99_ms"]:
    put(k, raw.get("freshness", {}).get(k))
    put(f"{k}_half_load", raw.get("freshness_half_load", {}).get(k))
# Freshness by stage: bench_stages.py prints its keys ready-made (stage_<stage>_{p50_ms,p99_ms,samples}[_half_load],
# and _increments for the increments workload around its staleness probe).
for name in ["stages", "stages_half_load", "stages_increments"]:
    for k, v in raw.get(name, {}).items():
        put(k, v)
emitted = raw.get("emitted", {})
if emitted.get("analytics_events_applied") and emitted.get("analytics_emitted_records"):
    put("emitted_bytes_per_event", emitted["analytics_emitted_bytes"] / emitted["analytics_events_applied"])
    put("emitted_records_per_event", emitted["analytics_emitted_records"] / emitted["analytics_events_applied"])
    put("emitted_bytes_per_record", emitted["analytics_emitted_bytes"] / emitted["analytics_emitted_records"])
p = raw.get("processor", {})
if p.get("processor_drain_seconds"):
    put("processor_backlog_events", p["processor_backlog_events"])
    put("processor_drain_seconds", p["processor_drain_seconds"])
    put("processor_events_per_sec", p["processor_backlog_events"] / p["processor_drain_seconds"])
backlog = raw.get("backlog", {})
for k in ["backlog_write_events_per_sec", "backlog_distinct_users", "backlog_hours"]:
    put(k, backlog.get(k))
for phase in ["rest", "load"]:
    for k, v in raw.get(f"rss_{phase}", {}).items():
        put(k, v)
# The promotions bench prints its keys ready-made (promotions_*), from a stack of its own; it may run alone
# (make bench-promotions), so its section carries its own time.
promotions_file = out / "promotions.json"
for k, v in raw.get("promotions", {}).items():
    put(k, v)
promotions_at = (datetime.datetime.fromtimestamp(promotions_file.stat().st_mtime, datetime.timezone.utc)
                 .strftime("%Y-%m-%d %H:%M UTC") if promotions_file.exists() else None)
# The widgets bench likewise (widgets_*, bench/src/bin/widgets.rs), from a stack of its own.
widgets_file = out / "widgets.json"
for k, v in raw.get("widgets", {}).items():
    put(k, v)
widgets_at = (datetime.datetime.fromtimestamp(widgets_file.stat().st_mtime, datetime.timezone.utc)
              .strftime("%Y-%m-%d %H:%M UTC") if widgets_file.exists() and raw.get("widgets") else None)
put("cores", cores)
if only:
    # The last full run's figures, with this run's figures of the section over them.
    earlier = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    r = {**{k: v for k, v in earlier.items() if not k.startswith(f"{only}_")}, **r}
(out / "results.json").write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")


def g(k):
    return r.get(k)


def ratio(a, b):
    return f"{g(a) / g(b):.0%}" if g(a) and g(b) else "n/a"


def share(v):
    return f"{v:.0%}" if v is not None else "n/a"


def times(a, b):
    return f"{a / b:.1f}×" if a and b else "n/a"


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:,.2f}{unit}"


# Freshness by stage, in pipeline order: (label, the key's stage, the stage it follows). The probe's rows come from
# its own samples (their log-append times read back by their read tokens), the engine's from its histograms.
STAGES = [
    ("POST answered (probe)", "appended_to_answered", None),
    ("read by the processor", "processor_read", None),
    ("checkpoint committed in PostgreSQL", "processor_stored", "processor_read"),
    ("emitted and committed in Kafka", "processor_emitted", "processor_stored"),
    ("read by the materializer", "materializer_read", "processor_emitted"),
    ("in PostgreSQL", "materializer_postgres", "materializer_read"),
    ("in Redis", "materializer_redis", "materializer_postgres"),
    ("seen by a GET (probe)", "appended_to_seen", "materializer_redis"),
]


def stage_key(stage, q, suffix):
    probe = stage.startswith("appended_")
    return f"freshness_{stage}_p{q}_ms{suffix}" if probe else f"stage_{stage}_p{q}_ms{suffix}"


def stage_samples(stage, suffix):
    return g(f"freshness_appended_samples{suffix}") if stage.startswith("appended_") else g(f"stage_{stage}_samples{suffix}")


def stage_rows(suffix, stages):
    """The rows of a stage table, in pipeline order, each with its share (the difference from the stage before)."""

    def share(stage, prev, q):
        a, b = g(stage_key(stage, q, suffix)), (g(stage_key(prev, q, suffix)) if prev else 0.0)
        return fmt(a - b) if a is not None and b is not None else "n/a"

    return [
        f"| {label} | {fmt(g(stage_key(stage, 50, suffix)))} | {fmt(g(stage_key(stage, 99, suffix)))} | "
        f"{share(stage, prev, 50)} | {share(stage, prev, 99)} | {count(stage_samples(stage, suffix))} |"
        for label, stage, prev in stages
    ]


def increments_stage_table():
    """The engine's stages of the increments workload while its staleness probe ran (no probe rows: the probe's
    samples carry no read token); no lines when the run has none (an older run)."""
    stages = [row for row in STAGES if not row[1].startswith("appended_")]
    if all(g(stage_key(stage, 50, "_increments")) is None for _, stage, _ in stages):
        return []
    lag = g("increment_processor_lag_max")
    return [
        "",
        "Which stage the staleness waits for: the age of the newest increment (ms since its broker log-append time) when it",
        "reaches each stage, from the `_input_age_seconds` histograms of the increments workload scraped when the probe",
        "started and stopped; and the processor's lag on the increments topic sampled by the probe every 250 ms (a gauge",
        f"refreshed every 5 s): p50 {fmt(g('increment_processor_lag_p50'))}, max {fmt(lag)} records over "
        f"{count(g('increment_processor_lag_samples'))} samples.",
        "",
        "| stage | p50 ms | p99 ms | share p50 | share p99 | samples |",
        "|---|---|---|---|---|---|",
        "| appended (broker log-append time) | 0 | 0 | | | |",
        *stage_rows("_increments", stages),
    ]


def stage_table(suffix, load):
    """The stage table of one probe phase; no lines when the run has no stage figures (an older run)."""
    if all(g(stage_key(stage, 50, suffix)) is None for _, stage, _ in STAGES):
        return []

    rows = stage_rows(suffix, STAGES)
    return [
        f"Where the time goes, POST load {load}: the age of the newest input (ms since its broker log-append time, the",
        "origin every stage shares; the POST is answered after it) when it reaches each stage. The probe's rows are its",
        "own events; the engine's rows are the `_input_age_seconds` histograms scraped when the probe started and stopped",
        "(the newest input of each loop wake-up, checkpoint or materializer batch, every partition). A stage's share is the",
        "difference of the quantile from the stage before it (quantiles do not add: an estimate).",
        "",
        "| stage | p50 ms | p99 ms | share p50 | share p99 | samples |",
        "|---|---|---|---|---|---|",
        "| appended (broker log-append time) | 0 | 0 | | | |",
        *rows,
        "",
    ]


def count(v):
    return "n/a" if v is None else f"{v:,.0f}"


def share(v):
    return "n/a" if v is None else f"{v * 100:.0f} %"


def pct(a, b):
    return g(a) / g(b) if g(a) and g(b) else None


def at_least(v, bound):
    return v is not None and v >= bound


def at_most(v, bound):
    return v is not None and v <= bound


def show(v, unit=""):
    return fmt(v, unit) if unit != "%" else ("n/a" if v is None else f"{v:.0%}")


# (target, measured, unit, met)
targets = [
    ("aggregation core ≥ 1,000,000 events/s/core", g("core_events_per_sec_per_core"), " events/s", at_least(g("core_events_per_sec_per_core"), 1e6)),
    ("state ≤ 16 bytes per user-hour", g("state_bytes_per_user_hour"), " B", at_most(g("state_bytes_per_user_hour"), 16)),
    ("GET current hour p99 ≤ 1 ms", g("get_p99_ms_current"), " ms", at_most(g("get_p99_ms_current"), 1)),
    ("GET current hour ≥ 70 % of the bare-hyper GET ceiling", pct("get_rps_current", "get_ceiling_rps"), "%", at_least(pct("get_rps_current", "get_ceiling_rps"), 0.7)),
    ("POST ≥ 50 % of the bare-hyper POST ceiling at 256 connections", pct("post_rps_256", "post_ceiling_rps_256"), "%", at_least(pct("post_rps_256", "post_ceiling_rps_256"), 0.5)),
    ("POST p99 ≤ 10 ms at 256 connections", g("post_p99_ms_256"), " ms", at_most(g("post_p99_ms_256"), 10)),
    ("freshness p99 ≤ 100 ms", g("freshness_p99_ms"), " ms", at_most(g("freshness_p99_ms"), 100)),
    ("freshness p99 ≤ 1 s (the allowance where exactly-once commits force it)", g("freshness_p99_ms"), " ms", at_most(g("freshness_p99_ms"), 1000)),
]
# The targets of the "Apache Kafka as the broker" issue.
kafka_targets = [
    ("POST at 256 connections ≥ 25 % of the same run's bare-hyper POST ceiling", pct("post_rps_256", "post_ceiling_rps_256"), "%", at_least(pct("post_rps_256", "post_ceiling_rps_256"), 0.25)),
    ("POST at 256 connections ≥ 80 % of the closed-loop broker ceiling (256 sends in flight)", pct("post_rps_256", "post_closed_loop_ceiling_rps_256"), "%", at_least(pct("post_rps_256", "post_closed_loop_ceiling_rps_256"), 0.8)),
    ("POST p99 ≤ 10 ms at 64 connections", g("post_p99_ms_64"), " ms", at_most(g("post_p99_ms_64"), 10)),
    ("whole processor drains a backlog at ≥ 150,000 events/s", g("processor_events_per_sec"), " events/s", at_least(g("processor_events_per_sec"), 150_000)),
    ("freshness p99 ≤ 100 ms at half the maximum POST rate", g("freshness_p99_ms_half_load"), " ms", at_most(g("freshness_p99_ms_half_load"), 100)),
]
# The targets of the "Increments" issue.
increment_targets = [
    ("increments read model staleness p99 ≤ 1 s under load (POST 200 until GET shows it)", g("increment_staleness_p99_ms"), " ms", at_most(g("increment_staleness_p99_ms"), 1000)),
]


# The targets of the "Answers" issue. A phase that answered errors (409, 404, 503) did not measure decided writes or
# reads of existing keys, so it does not meet its goal whatever its figures.
def answers_clean(op):
    return g(f"answers_{op}_non_2xx_64") == 0


def answers_errors(op):
    return "" if answers_clean(op) else f", {count(g(f'answers_{op}_non_2xx_64'))} non-2xx"


def answers_write_p99(op):
    v = g(f"answers_{op}_p99_over_post_p99_64")
    if v is None:
        return "n/a"
    return f"{v:.2f}× ({fmt(g(f'answers_{op}_p99_ms_64'))} ms vs {fmt(g('post_p99_ms_64'))} ms{answers_errors(op)})"


def answers_get_share():
    v = g("answers_get_rps_over_ceiling_64")
    if v is None:
        return "n/a"
    return f"{v:.0%} ({fmt(g('answers_get_rps_64'))} vs {fmt(g('get_ceiling_rps'))} requests/s{answers_errors('get')})"


answers_targets = [
    ("POST /answers (create) p99 ≤ 2× the same run's POST /analytics p99, 64 connections", answers_write_p99("create"), "",
     at_most(g("answers_create_p99_over_post_p99_64"), 2) and answers_clean("create")),
    ("PUT /answers/{key} (update) p99 ≤ 2× the same run's POST /analytics p99, 64 connections", answers_write_p99("update"), "",
     at_most(g("answers_update_p99_over_post_p99_64"), 2) and answers_clean("update")),
    ("GET /answers/{key} ≥ 70 % of the bare-hyper GET ceiling, 64 connections", answers_get_share(), "",
     at_least(g("answers_get_rps_over_ceiling_64"), 0.7) and answers_clean("get")),
]


# The targets of the "Promotions" issue (21): the GET share beside the bench's own same-run ceiling; 10 % of its ids
# are absent by design, so its non-2xx are the 404s expected.
def promotions_get(phase):
    v = pct(f"promotions_get_{phase}_rps", "promotions_get_ceiling_rps")
    if v is None:
        return None, "n/a"
    return v, f"{v:.0%} ({fmt(g(f'promotions_get_{phase}_rps'))} vs {fmt(g('promotions_get_ceiling_rps'))} requests/s)"


promotions_rss = max((g(f"promotions_rss_peak_kb_{s}") or 0 for s in ["command", "processor", "materializer", "query"]),
                     default=0) or None
promotions_targets = [
    (f"load {count(g('promotions_rows'))} rows end to end (upload start → active) at ≥ 150,000 rows/s",
     "n/a" if g("promotions_rows_per_sec") is None else
     f"{fmt(g('promotions_rows_per_sec'))} rows/s ({fmt(g('promotions_load_s'))} s)", "", at_least(g("promotions_rows_per_sec"), 150_000)),
    ("every service's peak RSS < 100 MB during the loads (VmHWM)",
     "n/a" if promotions_rss is None else f"{promotions_rss * 1024 / 1e6:,.1f} MB (the largest)", "",
     promotions_rss is not None and promotions_rss * 1024 < 100e6),
    ("GET /promotions/{id} ≥ 70 % of the bare-hyper GET ceiling at rest, 64 connections", promotions_get("rest")[1], "",
     at_least(promotions_get("rest")[0], 0.7)),
    ("GET /promotions/{id} ≥ 50 % of the bare-hyper GET ceiling during a load, 64 connections", promotions_get("load")[1], "",
     at_least(promotions_get("load")[0], 0.5) and g("promotions_get_load_within_load") == 1),
]


# The targets of the "Widgets" issue (22), measured by the widgets section on a stack of its own.
def widgets_load():
    if g("widgets_graph_widgets") is None:
        return "n/a"
    how = ("through `POST /widgets` only" if not g("widgets_load_bulk") else
           f"`POST /widgets` for {fmt(g('widgets_api_load_sent_s'))} s ({fmt(g('widgets_api_load_per_sec'))} decided creates/s), "
           f"the rest appended by the bulk path ({fmt(g('widgets_bulk_per_sec'))} widgets/s decided and readable)")
    return f"{count(g('widgets_graph_widgets'))} widgets in the graph; {how}"


def widgets_mixed():
    if g("widgets_mixed_rps") is None:
        return "n/a"
    return (f"{fmt(g('widgets_mixed_rps'))} requests/s, p99 {fmt(g('widgets_mixed_p99_ms'))} ms "
            f"({count(g('widgets_mixed_2xx'))} 2xx, {count(g('widgets_mixed_4xx'))} 4xx, {count(g('widgets_mixed_503'))} 503, "
            f"{count(g('widgets_mixed_errors'))} errors)")


widgets_rss = max((g(f"widgets_rss_kb_{s}") or 0 for s in ["command", "processor", "materializer", "query"]), default=0) or None
widgets_targets = [
    (f"load {count(g('widgets_widgets'))} widgets (the issue: 10,000,000), reporting the rate", widgets_load(), "",
     at_least(g("widgets_graph_widgets"), 10_000_000)),
    ("mixed load (50 % GET, 50 % decided writes), 64 connections: ≥ 10,000 requests/s", widgets_mixed(), "",
     at_least(g("widgets_mixed_rps"), 10_000)),
    ("the same run: p99 ≤ 50 ms", "n/a" if g("widgets_mixed_p99_ms") is None else f"{fmt(g('widgets_mixed_p99_ms'))} ms", "",
     at_most(g("widgets_mixed_p99_ms"), 50)),
    ("each service's RSS at that size, the graph's bytes per widget (reported, no bound)",
     "n/a" if widgets_rss is None else
     f"largest {widgets_rss * 1024 / 1e6:,.0f} MB; processor {fmt(g('widgets_processor_rss_bytes_per_widget'))} B/widget "
     f"(RSS growth), graph {fmt(g('widgets_graph_bytes_per_widget'))} B/widget", "", widgets_rss is not None),
    ("kill -9 of the processor at that size → a decided write answered again ≤ 10 s",
     "n/a" if g("widgets_recovery_processor_write_s") is None else
     f"{fmt(g('widgets_recovery_processor_write_s'))} s", "",
     at_most(g("widgets_recovery_processor_write_s"), 10)),
]


# The targets of "The analytics product" issue.
token_ok = g("token_tries") and g("token_round_trip_samples") == g("token_tries") and g("token_not_reflected") == 0
product_targets = [
    ("at least 1,000 SSE streams open at once", g("streams"), " streams", at_least(g("streams"), 1000)),
    ("SSE: a change reaching the read model is on every open stream within 100 ms (p99)",
     g("sse_change_to_all_streams_p99_ms"), " ms", at_most(g("sse_change_to_all_streams_p99_ms"), 100)),
    ("read-your-writes: a GET with `after=<token>` right after the POST reflects it, every time",
     "n/a" if g("token_tries") is None else f"{count(g('token_round_trip_samples') or 0)} of {count(g('token_tries'))} tries "
     f"({count(g('token_not_reflected'))} not reflected, {count(g('token_timeouts'))} timed out)", "", bool(token_ok)),
]


def target_rows(rows):
    # A measured value already written out (a string) is shown as it is.
    return [f"| {t} | {v if isinstance(v, str) else show(v, unit)} | {'yes' if ok else '**no**'} |" for t, v, unit, ok in rows]


PROMOTIONS_TARGETS = ("<!-- promotions targets -->", "<!-- /promotions targets -->")
WIDGETS_TARGETS = ("<!-- widgets targets -->", "<!-- /widgets targets -->")
WIDGETS_SECTION = ("<!-- widgets section -->", "<!-- /widgets section -->")
PROMOTIONS_SECTION = ("<!-- promotions section -->", "<!-- /promotions section -->")
promotions_targets_block = [
    PROMOTIONS_TARGETS[0],
    "Targets of the issue \"Promotions\" (measured by the promotions section, see [below](#promotions-bulk-generations)):",
    "",
    "| target | measured | met |",
    "|---|---|---|",
] + target_rows(promotions_targets) + [PROMOTIONS_TARGETS[1]]
widgets_targets_block = [
    WIDGETS_TARGETS[0],
    "Targets of the issue \"Widgets\" (measured by the widgets section, see [below](#widgets-10m-widget-graph-mixed-load-recovery)):",
    "",
    "| target | measured | met |",
    "|---|---|---|",
] + target_rows(widgets_targets) + [WIDGETS_TARGETS[1]]

cmd = "make bench QUICK=1" if quick else "make bench"
backlog_note = " (QUICK: a smaller backlog than the full run's 1,000,000)" if quick else ""
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [
    "# Benchmarks",
    "",
    f"Measured {now} on this machine ({cores} cores, shared: the load generator, the broker, Redis, PostgreSQL and the",
    f"four services all run on the same cores, so every figure stands beside a ceiling measured in the same run). Command:",
    f"`{cmd}` ({'QUICK: ' if quick else ''}wrk runs of {duration} with 2 threads). Raw numbers: `target/bench/results.json`.",
    "Regenerated by `scripts/bench.sh`; do not edit by hand.",
    "",
    "## Targets",
    "",
    "| target | measured | met |",
    "|---|---|---|",
] + target_rows(targets) + [
    "",
    "Targets of the issue \"Apache Kafka as the broker\":",
    "",
    "| target | measured | met |",
    "|---|---|---|",
] + target_rows(kafka_targets) + [
    "",
    "Targets of the issue \"Increments\":",
    "",
    "| target | measured | met |",
    "|---|---|---|",
] + target_rows(increment_targets) + [
    "",
    "Targets of the issue \"Answers\":",
    "",
    "| target | measured | met |",
    "|---|---|---|",
] + target_rows(answers_targets) + [
    "",
] + promotions_targets_block + [
    "",
] + widgets_targets_block + [
    "",
    "Targets of the issue \"The analytics product\":",
    "",
    "| target | measured | met |",
    "|---|---|---|",
] + target_rows(product_targets) + [
    "",
    "## POST /analytics (durable: 204 after the broker's acks=all)",
    "",
    "| connections | requests/s | ceiling (bare hyper 204) | ratio | closed-loop broker ceiling | ratio | p50 ms | p99 ms | p99.9 ms | non-2xx |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for c in ["64", "256"]:
    lines.append(f"| {c} | {fmt(g('post_rps_' + c))} | {fmt(g('post_ceiling_rps_' + c))} | {ratio('post_rps_' + c, 'post_ceiling_rps_' + c)} | "
                 f"{fmt(g('post_closed_loop_ceiling_rps_' + c))} | {ratio('post_rps_' + c, 'post_closed_loop_ceiling_rps_' + c)} | "
                 f"{fmt(g('post_p50_ms_' + c))} | {fmt(g('post_p99_ms_' + c))} | {fmt(g('post_p999_ms_' + c))} | {fmt(g('post_non_2xx_' + c))} |")
lines += [
    "",
    "Closed-loop broker ceiling: what POST could reach if the command added nothing. The command's own producer settings",
    "(idempotent, acks=all, murmur2_random, its linger and queue), the same Avro records and keys, to a fresh topic with as",
    f"many partitions as the events topic; exactly N sends in flight, each awaited before the next ({duration} each):",
    "",
    "| sends in flight | acks/s | p50 ms | p99 ms | p99.9 ms | errors |",
    "|---|---|---|---|---|---|",
]
for c in ["64", "256"]:
    lines.append(f"| {c} | {fmt(g('post_closed_loop_ceiling_rps_' + c))} | {fmt(g('post_closed_loop_p50_ms_' + c))} | "
                 f"{fmt(g('post_closed_loop_p99_ms_' + c))} | {fmt(g('post_closed_loop_p999_ms_' + c))} | {fmt(g('post_closed_loop_errors_' + c))} |")
lines += [
    "",
    f"At half the 256-connection maximum (`paced-post`: a fixed {fmt(g('post_target_rps_half_load'))} requests/s over 256 keep-alive",
    f"connections for {duration}, latency from each request's scheduled time): {fmt(g('post_rps_half_load'))} requests/s achieved,",
    f"p50 {fmt(g('post_p50_ms_half_load'))} ms, p99 {fmt(g('post_p99_ms_half_load'))} ms, p99.9 {fmt(g('post_p999_ms_half_load'))} ms, "
    f"{fmt(g('post_non_2xx_half_load'))} non-2xx.",
    "",
    f"Broker raw produce rate (rdkafka, idempotent, acks=all, 100-byte messages): {fmt(g('broker_produce_msgs_per_sec'))} msg/s.",
    "",
    "## POST /increment (durable: 200 after the broker's acks=all)",
    "",
    "| connections | requests/s | ceiling (bare hyper 204) | ratio | p50 ms | p99 ms | p99.9 ms | non-2xx |",
    "|---|---|---|---|---|---|---|---|",
    f"| 256 | {fmt(g('increment_rps_256'))} | {fmt(g('post_ceiling_rps_256'))} | {ratio('increment_rps_256', 'post_ceiling_rps_256')} | "
    f"{fmt(g('increment_p50_ms_256'))} | {fmt(g('increment_p99_ms_256'))} | {fmt(g('increment_p999_ms_256'))} | {fmt(g('increment_non_2xx_256'))} |",
    "",
    f"Staleness of the increments read model while that load runs (`increment-staleness`: POST 1 to a probe key, GET until",
    f"the sum shows it): p50 {fmt(g('increment_staleness_p50_ms'))} ms, p99 {fmt(g('increment_staleness_p99_ms'))} ms, max "
    f"{fmt(g('increment_staleness_max_ms'))} ms over {count(g('increment_staleness_samples'))} samples. The reference design's bound is 10 s.",
    *increments_stage_table(),
    "",
    f"The sums pipeline over that load (the services' counters): the processor emitted {fmt(g('increment_emitted_per_s'))} sums/s, the",
    f"materializer wrote {fmt(g('increment_materialized_per_s'))} rows/s, its PostgreSQL writes taking "
    f"{share(g('increment_materializer_pg_busy'))} of the time, so it could write {fmt(g('increment_materializer_capacity_per_s'))} rows/s "
    f"({times(g('increment_materializer_capacity_per_s'), g('increment_emitted_per_s'))} the emit rate).",
    "",
    "## Answers (64 connections)",
    "",
    "Writes are decided: `201`/`200` once the processor has decided the command (after the broker's acks=all and the",
    "decision's round trip through the replies topic), beside POST /analytics at 64 connections earlier in the same run.",
    "",
    "| request | requests/s | p50 ms | p99 ms | p99.9 ms | p99 ÷ POST /analytics p99 | non-2xx |",
    "|---|---|---|---|---|---|---|",
    f"| POST /analytics (the same run) | {fmt(g('post_rps_64'))} | {fmt(g('post_p50_ms_64'))} | {fmt(g('post_p99_ms_64'))} | "
    f"{fmt(g('post_p999_ms_64'))} | | {count(g('post_non_2xx_64'))} |",
]
for op, label in [("create", "POST /answers (create, a new key each)"), ("update", "PUT /answers/{key} (update, 1,000 keys)")]:
    v = g(f"answers_{op}_p99_over_post_p99_64")
    lines.append(f"| {label} | {fmt(g(f'answers_{op}_rps_64'))} | {fmt(g(f'answers_{op}_p50_ms_64'))} | {fmt(g(f'answers_{op}_p99_ms_64'))} | "
                 f"{fmt(g(f'answers_{op}_p999_ms_64'))} | {'n/a' if v is None else f'{v:.2f}×'} | {count(g(f'answers_{op}_non_2xx_64'))} |")
lines += [
    "",
    "| read | requests/s | ceiling (bare hyper, fixed body) | ratio | p50 ms | p99 ms | p99.9 ms | non-2xx |",
    "|---|---|---|---|---|---|---|---|",
    f"| GET /answers/{{key}} (1,000 keys) | {fmt(g('answers_get_rps_64'))} | {fmt(g('get_ceiling_rps'))} | "
    f"{ratio('answers_get_rps_64', 'get_ceiling_rps')} | {fmt(g('answers_get_p50_ms_64'))} | {fmt(g('answers_get_p99_ms_64'))} | "
    f"{fmt(g('answers_get_p999_ms_64'))} | {count(g('answers_get_non_2xx_64'))} |",
    f"| GET /answers/{{key}}/history (a key with 1,000 changes, all in one page) | {fmt(g('answers_history_rps_64'))} | | | "
    f"{fmt(g('answers_history_p50_ms_64'))} | {fmt(g('answers_history_p99_ms_64'))} | {fmt(g('answers_history_p999_ms_64'))} | "
    f"{count(g('answers_history_non_2xx_64'))} |",
    "",
    f"Before them, in {fmt(g('answers_setup_s'))} s: 1,000 keys created for the updates and GETs, and one key given 1 create and",
    f"999 updates, each retried with its `?id=` while its outcome was unknown ({count(g('answers_setup_writes_failed'))} writes failed);",
    f"read back before the runs: {count(g('answers_pool_keys_readable'))} of the 1,000 keys and "
    f"{count(g('answers_history_entries'))} history entries. The keys carry a tag of the run, so every create is of a new key.",
    "",
    "## GET /analytics (64 connections)",
    "",
    "| workload | requests/s | ceiling (bare hyper, fixed body) | ratio | p50 ms | p99 ms | p99.9 ms |",
    "|---|---|---|---|---|---|---|",
    f"| 95 % current hour (Redis) | {fmt(g('get_rps_current'))} | {fmt(g('get_ceiling_rps'))} | {ratio('get_rps_current', 'get_ceiling_rps')} | {fmt(g('get_p50_ms_current'))} | {fmt(g('get_p99_ms_current'))} | {fmt(g('get_p999_ms_current'))} |",
    f"| old hours, Redis emptied first (PostgreSQL, then cache) | {fmt(g('get_rps_old'))} | | | {fmt(g('get_p50_ms_old'))} | {fmt(g('get_p99_ms_old'))} | {fmt(g('get_p999_ms_old'))} |",
    "",
    f"`redis-benchmark -t get -c 50` in the same run: {fmt(g('redis_benchmark_get_rps'))} GET/s.",
    "",
    "## GET time ranges (64 connections, read from PostgreSQL)",
    "",
    "| workload | requests/s | ceiling (bare hyper, fixed body) | ratio | p50 ms | p99 ms | p99.9 ms | non-2xx |",
    "|---|---|---|---|---|---|---|---|",
    f"| `/analytics/timeseries`, last 48 hours, `interval=hour` | {fmt(g('timeseries_rps_48h'))} | {fmt(g('get_ceiling_rps'))} | "
    f"{ratio('timeseries_rps_48h', 'get_ceiling_rps')} | {fmt(g('timeseries_p50_ms_48h'))} | {fmt(g('timeseries_p99_ms_48h'))} | "
    f"{fmt(g('timeseries_p999_ms_48h'))} | {count(g('timeseries_non_2xx_48h'))} |",
    f"| `/analytics/aggregate`, last 7 days (168 whole hours, sketch-estimated unique users) | {fmt(g('aggregate_rps_7d'))} | "
    f"{fmt(g('get_ceiling_rps'))} | {ratio('aggregate_rps_7d', 'get_ceiling_rps')} | {fmt(g('aggregate_p50_ms_7d'))} | "
    f"{fmt(g('aggregate_p99_ms_7d'))} | {fmt(g('aggregate_p999_ms_7d'))} | {count(g('aggregate_non_2xx_7d'))} |",
    "",
    "Both run after the POST phases, whose events (5 % spread over the past week) are the rows read. One answer of each,",
    f"just before: {count(g('timeseries_nonempty_buckets_48h'))} of {count(g('timeseries_buckets_48h'))} hourly buckets hold events "
    f"({count(g('timeseries_events_48h'))} in all); the 7 days hold {count(g('aggregate_events_7d'))} events of "
    f"{count(g('aggregate_unique_users_7d'))} unique users.",
    "",
    "## Read-your-writes and live updates (`live-probe`, on a quiet stack)",
    "",
    "Token round trip: POST one event, take its `Analytics-Token`, then `GET /analytics?timestamp=..&after=<token>`",
    "for the event's hour, one after another; each answer is checked to count the event.",
    "",
    "| tries | reflected | not reflected | 503 (wait over) | p50 ms | p99 ms | max ms |",
    "|---|---|---|---|---|---|---|",
    f"| {count(g('token_tries'))} | {count((g('token_round_trip_samples') or 0) - (g('token_not_reflected') or 0) if g('token_tries') else None)} | "
    f"{count(g('token_not_reflected'))} | {count(g('token_timeouts'))} | {fmt(g('token_round_trip_p50_ms'))} | "
    f"{fmt(g('token_round_trip_p99_ms'))} | {fmt(g('token_round_trip_max_ms'))} |",
    "",
    f"Server-Sent Events: {count(g('streams'))} `GET /analytics/live` streams open at once (opened, first snapshot read, in "
    f"{fmt(g('streams_open_s'))} s), then one POST at a time, each timed until every stream has shown it:",
    "",
    "| from → to | p50 ms | p99 ms | max ms | samples |",
    "|---|---|---|---|---|",
]
for key, label in [("sse_post_to_first_stream", "POST → first stream"),
                   ("sse_post_to_all_streams", "POST → every stream"),
                   ("sse_change_to_all_streams", "change reaching the read model (the materializer's notification) → every stream")]:
    lines.append(f"| {label} | {fmt(g(key + '_p50_ms'))} | {fmt(g(key + '_p99_ms'))} | {fmt(g(key + '_max_ms'))} | {count(g(key + '_samples'))} |")
lines += [
    "",
    "POST → every stream includes the pipeline (command, broker, processor, materializer; see freshness below); the issue's",
    "100 ms is from the change reaching the read model. A round without a notification before its first stream saw it (the",
    "1 s refresh rendered it) has no sample in that row.",
    "",
    "## Processor",
    "",
    "| figure | value |",
    "|---|---|",
    f"| aggregation core (criterion, one core, {fmt(g('core_events'))} events, 1M users skewed, 6 hours) | {fmt(g('core_events_per_sec_per_core'))} events/s |",
    f"| whole processor, draining a backlog of {fmt(g('processor_backlog_events'))} events from the broker{backlog_note}: from its start to the last one applied | "
    f"{fmt(g('processor_events_per_sec'))} events/s ({fmt(g('processor_drain_seconds'))} s) |",
    f"| state per unique user-hour (core benchmark) | {fmt(g('state_bytes_per_user_hour'))} bytes |",
    f"| state per unique user-hour (live processor after the run) | {fmt(g('live_state_bytes_per_user_hour'))} bytes |",
    f"| aggregates emitted per analytics event over the POST phases (hour records, sketches included) | "
    f"{fmt(g('emitted_bytes_per_event'))} bytes ({fmt(g('emitted_records_per_event'))} records of {fmt(g('emitted_bytes_per_record'))} bytes on average) |",
    "",
    "The backlog is written straight to the events topic by `backlog` while the processor is stopped: exactly that many",
    f"events, encoded and keyed as the command does ({fmt(g('backlog_distinct_users'))} distinct users, event times in the current",
    f"hour and the {int(g('backlog_hours') or 1) - 1} hours before it; written at {fmt(g('backlog_write_events_per_sec'))} events/s).",
    "",
    "## Freshness (POST 2xx → first GET showing it)",
    "",
    "| POST load while the probe runs | p50 ms | p99 ms | max ms | samples |",
    "|---|---|---|---|---|",
    f"| saturating: wrk, 256 connections | {fmt(g('freshness_p50_ms'))} | {fmt(g('freshness_p99_ms'))} | {fmt(g('freshness_max_ms'))} | {fmt(g('freshness_samples'))} |",
    f"| half the maximum: {fmt(g('post_rps_half_load'))} requests/s paced | {fmt(g('freshness_p50_ms_half_load'))} | {fmt(g('freshness_p99_ms_half_load'))} | "
    f"{fmt(g('freshness_max_ms_half_load'))} | {fmt(g('freshness_samples_half_load'))} |",
    "",
    *stage_table("_half_load", f"half the maximum ({fmt(g('post_rps_half_load'))} requests/s paced)"),
    *stage_table("", "saturating (wrk, 256 connections)"),
    PROMOTIONS_SECTION[0],
    "## Promotions (bulk generations)",
    "",
    ("Not measured in this run." if promotions_at is None else
     f"Measured {promotions_at} by the promotions section (`make bench-promotions`, or the last section of `make bench`;"
     f" `bench/src/bin/promotions.rs`) on a stack of its own: the release binaries, {count(g('promotions_partitions'))} partitions,"
     " its own topics, schema and Redis prefix on the shared broker, PostgreSQL and Redis, all removed at the end."),
    "",
    "| load (a generated file, random v4 ids) | rows | file | upload (all rows in the log, 202) | to active (upload start → pointer moved) | rows/s |",
    "|---|---|---|---|---|---|",
    f"| first file, nothing else running | {count(g('promotions_rows'))} | {fmt((g('promotions_file_bytes') or 0) / 1e6)} MB | "
    f"{fmt(g('promotions_upload_s'))} s | {fmt(g('promotions_load_s'))} s | {fmt(g('promotions_rows_per_sec'))} |",
    f"| the same file again (a new generation), while the GET below runs | {count(g('promotions_rows'))} | | | "
    f"{fmt(g('promotions_load2_s'))} s | {fmt(g('promotions_load2_rows_per_sec'))} |",
    "",
    f"On disk, one generation of {count(g('promotions_rows'))} rows: {fmt((g('promotions_table_bytes') or 0) / 1e6)} MB "
    f"(rows {fmt((g('promotions_heap_bytes') or 0) / 1e6)} MB, the rest the primary key); during a switch two generations are kept "
    f"({count(g('promotions_generation_tables_after'))} tables after the second load).",
    "",
    f"GET /promotions/{{id}}, {count(g('promotions_get_connections'))} connections, {duration}: ids picked from a uniform sample of the file's"
    " ids plus one absent id for every nine (so about 10 % of the answers are the expected 404s, counted as non-2xx):",
    "",
    "| run | requests/s | ceiling (bare hyper, same run) | ratio | p50 ms | p99 ms | p99.9 ms | non-2xx (404) | from the local copy | no PostgreSQL round trip |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for phase, label in [("rest", "at rest"), ("load", "during the second load")]:
    lines.append(f"| {label} | {fmt(g(f'promotions_get_{phase}_rps'))} | {fmt(g('promotions_get_ceiling_rps'))} | "
                 f"{ratio(f'promotions_get_{phase}_rps', 'promotions_get_ceiling_rps')} | {fmt(g(f'promotions_get_{phase}_p50_ms'))} | "
                 f"{fmt(g(f'promotions_get_{phase}_p99_ms'))} | {fmt(g(f'promotions_get_{phase}_p999_ms'))} | "
                 f"{count(g(f'promotions_get_{phase}_non_2xx'))} of {count(g(f'promotions_get_{phase}_requests'))} | "
                 f"{share(g(f'promotions_get_{phase}_copy_rate'))} | {share(g(f'promotions_get_{phase}_cache_hit_rate'))} |")
lines += [
    "",
    f"The query's local copy of the first generation ([docs/architecture.md](architecture.md), bulk generations) was ready "
    f"{fmt(g('promotions_copy_ready_s'))} s after the pointer named it (its build: {fmt(g('promotions_copy_build_s'))} s); "
    "the GETs ran after that. Until a copy is ready, a lookup is the row cache's or PostgreSQL's.",
]
lines += [
    "",
    "Peak RSS (VmHWM, KiB; each service started fresh for the section):",
    "",
    "| service | after the first load | after everything (second load and GETs) |",
    "|---|---|---|",
]
for s in ["command", "processor", "materializer", "query"]:
    lines.append(f"| {s} | {fmt(g(f'promotions_rss_peak_kb_{s}_load'))} | {fmt(g(f'promotions_rss_peak_kb_{s}'))} |")
lines += [
    PROMOTIONS_SECTION[1],
    "",
    WIDGETS_SECTION[0],
    "## Widgets (10M-widget graph, mixed load, recovery)",
    "",
    ("Not measured in this run." if widgets_at is None else
     f"Measured {widgets_at} by the widgets section (`make bench-widgets`, or the last section of `make bench`;"
     f" `bench/src/bin/widgets.rs`) on a stack of its own: the release binaries, {count(g('widgets_partitions'))} partitions"
     " (every widget command in one of them: the one decision partition), its own topics, schema and Redis prefix on the"
     " shared broker, PostgreSQL and Redis, all removed at the end. Widget `n` is serial `w<n>` with ports"
     " `P`, `R`, `Q`, `PR`, `PQ`, `RQ`, `PRQ`, `PP`, `QQR` in turn."),
    "",
    f"**Load** of {count(g('widgets_widgets'))} widgets. Each phase's clock runs from its first request until"
    " `GET /widgets/<its last serial>?after=<its last command's token>` answers 200 (everything before it decided and"
    " in the read model):",
    "",
    "| phase | path | widgets | requests sent / appended | decided | decided and readable | widgets/s (readable) |",
    "|---|---|---|---|---|---|---|",
    f"| 1 | API: `POST /widgets`, {count(g('widgets_connections'))} connections (each 201 a decided create) | "
    f"{count(g('widgets_api_load_created'))} | {fmt(g('widgets_api_load_sent_s'))} s | "
    f"{fmt(g('widgets_api_load_per_sec'))} creates/s (p50 {fmt(g('widgets_api_load_p50_ms'))} ms, p99 {fmt(g('widgets_api_load_p99_ms'))} ms) | "
    f"{fmt(g('widgets_api_load_readable_s'))} s | {fmt(g('widgets_api_load_readable_per_sec'))} |",
]
if g("widgets_load_bulk"):
    lines += [
        f"| 2 | **bulk**: create commands appended straight to `widgets.commands` (see below) | {count(g('widgets_bulk_widgets'))} | "
        f"{fmt(g('widgets_bulk_append_s'))} s ({fmt(g('widgets_bulk_append_per_sec'))}/s) | {fmt(g('widgets_bulk_decided_s'))} s "
        f"({fmt(g('widgets_bulk_decided_per_sec'))}/s) | {fmt(g('widgets_bulk_readable_s'))} s | {fmt(g('widgets_bulk_per_sec'))} |",
        "",
        f"At the API's rate the other {count(g('widgets_bulk_widgets'))} would have taken {fmt(g('widgets_api_projected_rest_s'))} s,"
        " more than the bench's budget (`--api-budget`, 480 s), so they took the **bulk path**: the tool appends each create to the stack's"
        " `widgets.commands` as the command does (`widgets::wire::encode_command`, the shard's key `0`, the command's"
        " idempotent `acks=all` producer settings), and the processor decides every one as usual (same rules, its replies"
        " unread). It measures the decision partition, the checkpoints and the read side; not the HTTP edge, which phase 1"
        " measures. Decided: the processor's `analytics_processor_events_applied_total` reached the commands (it moves at"
        " each checkpoint).",
    ]
elif g("widgets_api_rest_created") is not None:
    lines += [
        f"| 2 | API, the rest | {count(g('widgets_api_rest_created'))} | | | {fmt(g('widgets_api_rest_readable_s'))} s | "
        f"{fmt(g('widgets_load_per_sec'))} (whole load) |",
    ]
lines += [
    "",
    f"**Memory at {count(g('widgets_graph_widgets'))} widgets** (KiB; `VmRSS` before the load and after it, `VmHWM` its peak):",
    "",
    "| service | VmRSS before the load | VmRSS after | VmHWM after |",
    "|---|---|---|---|",
]
for s in ["command", "processor", "materializer", "query"]:
    lines.append(f"| {s} | {fmt(g(f'widgets_rss_kb_{s}_rest'))} | {fmt(g(f'widgets_rss_kb_{s}'))} | {fmt(g(f'widgets_hwm_kb_{s}'))} |")
lines += [
    "",
    f"The processor's RSS grew {fmt(g('widgets_processor_rss_bytes_per_widget'))} bytes per widget; the graph itself holds "
    f"{fmt(g('widgets_graph_bytes_per_widget'))} bytes per widget on the heap (`analytics_processor_widgets_graph_bytes` ÷ "
    f"`analytics_processor_widgets`). In PostgreSQL: `processor_widgets` {fmt((g('widgets_pg_bytes_processor_widgets') or 0) / 1e6)} MB, "
    f"`widgets` {fmt((g('widgets_pg_bytes_widgets') or 0) / 1e6)} MB, slots included (tables and indexes).",
    "",
    f"**Mixed load**, {count(g('widgets_connections'))} connections, {fmt(g('widgets_duration_s'))} s, closed loop (each connection sends"
    " its next request when the last is answered): 50 % `GET /widgets/{serial}` of a random loaded serial, 50 % writes (40 %"
    " creates of new serials, 35 % associations of two loaded widgets with the same ports on one of their types, 15 %"
    " removals of an association the connection made, 10 % deletes of a widget it created). Every write is answered once"
    " decided. Ceilings of the same run, at the same connections: the bare-hyper `ceiling` binary under wrk (as"
    " `make bench` measures them), and under this tool's own mixed client (the load generator's own ceiling).",
    "",
    "| run | requests/s | ratio to the wrk ceiling (writes: POST, the rest: GET) | p50 ms | p99 ms | p99.9 ms | 2xx | 4xx | 503 | other | errors |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
for key, label, ceiling in [("widgets_mixed", "**mixed load, all requests**", "get"), ("widgets_mixed_reads", "its reads", "get"),
                            ("widgets_mixed_writes", "its writes", "post"),
                            ("widgets_mixed_ceiling", "the mixed client against the bare-hyper GET server", "get")]:
    lines.append(f"| {label} | {fmt(g(key + '_rps'))} | {ratio(key + '_rps', f'widgets_{ceiling}_ceiling_rps')} | {fmt(g(key + '_p50_ms'))} | "
                 f"{fmt(g(key + '_p99_ms'))} | {fmt(g(key + '_p999_ms'))} | {count(g(key + '_2xx'))} | {count(g(key + '_4xx'))} | "
                 f"{count(g(key + '_503'))} | {count(g(key + '_other'))} | {count(g(key + '_errors'))} |")
for mode in ["get", "post"]:
    key = f"widgets_{mode}_ceiling"
    lines.append(f"| bare-hyper {mode.upper()} ceiling (wrk) | {fmt(g(key + '_rps'))} | {ratio(key + '_rps', 'widgets_get_ceiling_rps')} | "
                 f"{fmt(g(key + '_p50_ms'))} | {fmt(g(key + '_p99_ms'))} | {fmt(g(key + '_p999_ms'))} | | | | | |")
lines += [
    "",
    "| write | requests | 2xx | 4xx (404, 409) |",
    "|---|---|---|---|",
]
for kind in ["creates", "associations", "dissociations", "deletes"]:
    lines.append(f"| {kind} | {count(g(f'widgets_mixed_{kind}_requests'))} | {count(g(f'widgets_mixed_{kind}_2xx'))} | "
                 f"{count(g(f'widgets_mixed_{kind}_4xx'))} |")
busy = g("widgets_mixed_checkpoint_busy_s")
lines += [
    "",
    f"Where a write's time goes, over the mixed run (the services' `/metrics` before and after): the processor checkpointed the"
    f" widgets {count(g('widgets_mixed_checkpoints'))} times, {fmt(g('widgets_mixed_checkpoint_avg_ms'))} ms on average (PostgreSQL"
    f" {fmt(g('widgets_mixed_checkpoint_store_avg_ms'))} ms, Kafka transaction {fmt(g('widgets_mixed_checkpoint_emit_avg_ms'))} ms),"
    f" p99 ≤ {fmt(g('widgets_mixed_checkpoint_p99_bucket_ms'))} ms (histogram bucket); in all "
    f"{fmt(busy)} s of the {fmt(g('widgets_duration_s'))} s"
    + (f" ({busy / g('widgets_duration_s'):.0%})" if busy is not None and g("widgets_duration_s") else "")
    + " with a widgets checkpoint in flight (its loop goes on deciding meanwhile: checkpoints overlap consumption)."
    " The command's append (broker acks=all) took"
    f" {fmt(g('widgets_mixed_append_avg_ms'))} ms on average, p99 ≤ {fmt(g('widgets_mixed_append_p99_bucket_ms'))} ms.",
    "",
    f"**Recovery** at {count(g('widgets_graph_widgets'))} widgets (after the mixed load), each service killed with `kill -9` and"
    " started again at once:",
    "",
    "| service killed | until | seconds |",
    "|---|---|---|",
    f"| processor | the new process answers `/ready` | {fmt(g('widgets_recovery_processor_ready_s'))} |",
    f"| processor | it has claimed every partition of the workload, the shard's among them (`analytics_processor_restores_total`;"
    f" its claims, run together, took {fmt(g('widgets_recovery_processor_claims_s'))} s summed) | {fmt(g('widgets_recovery_processor_all_claimed_s'))} |",
    f"| processor | a create (sent at the kill, retried with its `?id=`) is answered 201 | **{fmt(g('widgets_recovery_processor_write_s'))}** |",
    f"| command | a create is answered 201 | {fmt(g('widgets_recovery_command_write_s'))} |",
    f"| materializer | a create is readable (a plain GET) | {fmt(g('widgets_recovery_materializer_row_s'))} |",
    f"| materializer | the same create is readable with its token (after the started materializer's Redis catch-up) | "
    f"{fmt(g('widgets_recovery_materializer_readable_s'))} |",
    f"| query | a GET of a loaded widget answers 200 | {fmt(g('widgets_recovery_query_read_s'))} |",
    "",
    f"The restored processor held {count(g('widgets_recovery_processor_graph_widgets'))} widgets, at {fmt(g('widgets_recovery_processor_rss_kb'))}"
    f" KiB RSS (peak {fmt(g('widgets_recovery_processor_hwm_kb'))} KiB).",
    WIDGETS_SECTION[1],
    "",
    "## Memory (RSS, KiB)",
    "",
    "| service | at rest | under load |",
    "|---|---|---|",
]
for s in ["command", "processor", "materializer", "query"]:
    lines.append(f"| {s} | {fmt(g(f'rss_kb_{s}_rest'))} | {fmt(g(f'rss_kb_{s}_load'))} |")


def block(text, marks):
    """The lines of `text` between (and with) the markers `marks`, as one string."""
    start, end = text.index(marks[0]), text.index(marks[1]) + len(marks[1])
    return text[start:end]


if only:
    # Splices this run's two blocks of the section into the report of the last full run, in place; a report written
    # before the widgets section existed gets its blocks after the promotions ones.
    doc = root / "docs/benchmarks.md"
    text = doc.read_text()
    rendered = "\n".join(lines)
    blocks = {"promotions": [(PROMOTIONS_TARGETS, None), (PROMOTIONS_SECTION, None)],
              "widgets": [(WIDGETS_TARGETS, PROMOTIONS_TARGETS), (WIDGETS_SECTION, PROMOTIONS_SECTION)]}[only]
    for marks, after in blocks:
        if marks[0] not in text and after is not None and after[1] in text:
            end = text.index(after[1]) + len(after[1])
            text = text[:end] + "\n\n" + block(rendered, marks) + text[end:]
        elif marks[0] not in text:
            sys.exit(f"docs/benchmarks.md has no {marks[0]} block: run make bench once")
        else:
            text = text.replace(block(text, marks), block(rendered, marks))
    notes = root / "docs/benchmarks-notes.md"
    if notes.exists() and "\n## How the broker-bound figures are measured" in text:
        text = text[:text.index("## How the broker-bound figures are measured")] + notes.read_text().rstrip() + "\n"
    doc.write_text(text)
    sys.exit(0)
notes = root / "docs/benchmarks-notes.md"
if notes.exists():
    lines += ["", notes.read_text().rstrip()]
(root / "docs/benchmarks.md").write_text("\n".join(lines) + "\n")
