//! Time ranges of the read API: `GET /analytics/timeseries` and
//! `GET /analytics/aggregate` in the query service.
//!
//! Pure: strict parsing of both query strings, the UTC-aligned buckets a
//! range covers, which stored value answers its unique users exactly (or
//! that the hourly sketches estimate them), and the JSON answers. The query
//! service reads the rows ([`super::read_model::pg`]) and calls these.

use std::collections::BTreeMap;

use serde::Serialize;

use super::event::RejectReason;
use super::request::{split_query, truncate_for_message, Param, Seen};
use super::time::{DayStart, EpochMillis, HourStart, DAY_MS, HOUR_MS};
use super::HourCounts;

/// Most buckets one timeseries answer may have.
pub const MAX_BUCKETS: u64 = 1000;

/// The longest range `GET /analytics/aggregate` answers, in hours: 31 days
/// (any calendar month; the dashboard asks for 30). Its unique users merge
/// one sketch per (hour, partition), up to 49 KB each, so the work grows
/// with the range: 744 hours × 4 partitions is ~146 MB read from
/// PostgreSQL, where a year would be ~1.7 GB.
pub const MAX_AGGREGATE_HOURS: u64 = 31 * 24;

/// The length of a timeseries bucket, aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
}

impl Interval {
    /// The name in the query string and the answer.
    pub fn name(self) -> &'static str {
        match self {
            Interval::Hour => "hour",
            Interval::Day => "day",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hour" => Some(Interval::Hour),
            "day" => Some(Interval::Day),
            _ => None,
        }
    }

    pub fn length_ms(self) -> i64 {
        match self {
            Interval::Hour => HOUR_MS,
            Interval::Day => DAY_MS,
        }
    }

    /// The start of the bucket that contains `ts_ms`.
    pub fn floor(self, ts_ms: EpochMillis) -> EpochMillis {
        ts_ms.div_euclid(self.length_ms()) * self.length_ms()
    }
}

/// A non-empty half-open time range `[from_ms, to_ms)`, both non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    from_ms: EpochMillis,
    to_ms: EpochMillis,
}

/// Which stored value answers a range's unique users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniqueUsers {
    /// The range is exactly one UTC hour: its exact total.
    Hour(HourStart),
    /// The range is exactly one whole UTC day: its exact total.
    Day(DayStart),
    /// Any other range: the merged hourly sketches' estimate.
    Estimated,
}

impl Range {
    /// # Errors
    /// [`RangeReject::EmptyRange`] unless `from_ms < to_ms`.
    pub fn new(from_ms: EpochMillis, to_ms: EpochMillis) -> Result<Self, RangeReject> {
        if from_ms < to_ms {
            Ok(Range { from_ms, to_ms })
        } else {
            Err(RangeReject::EmptyRange)
        }
    }

    pub fn from_ms(self) -> EpochMillis {
        self.from_ms
    }

    pub fn to_ms(self) -> EpochMillis {
        self.to_ms
    }

    /// The buckets of `interval` that overlap the range (at least one).
    pub fn bucket_count(self, interval: Interval) -> u64 {
        let len = interval.length_ms();
        ((self.to_ms - 1).div_euclid(len) - self.from_ms.div_euclid(len) + 1) as u64
    }

    /// The start of every bucket of `interval` that overlaps the range, in order.
    pub fn bucket_starts(self, interval: Interval) -> impl Iterator<Item = EpochMillis> {
        let (first, len) = (interval.floor(self.from_ms), interval.length_ms());
        (0..self.bucket_count(interval) as i64).map(move |k| first + k * len)
    }

    /// `[start of the first bucket, end of the last)`: the rows to read. The
    /// end saturates at the largest time (a bucket there holds no row anyway).
    pub fn covering(self, interval: Interval) -> (EpochMillis, EpochMillis) {
        (interval.floor(self.from_ms), interval.floor(self.to_ms - 1).saturating_add(interval.length_ms()))
    }

    /// Exact when the range is one UTC hour or one whole UTC day, else estimated.
    pub fn unique_users(self) -> UniqueUsers {
        let len = self.to_ms - self.from_ms;
        match (HourStart::from_aligned(self.from_ms), DayStart::from_aligned(self.from_ms)) {
            (Some(hour), _) if len == HOUR_MS => UniqueUsers::Hour(hour),
            (_, Some(day)) if len == DAY_MS => UniqueUsers::Day(day),
            _ => UniqueUsers::Estimated,
        }
    }
}

/// A parsed `GET /analytics/timeseries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeseriesRequest {
    pub range: Range,
    pub interval: Interval,
}

/// Why a range request was refused: always the caller's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeReject {
    /// The query string itself: duplicate or unknown parameters, encoding, length.
    #[error(transparent)]
    Query(#[from] RejectReason),
    #[error("missing parameter `{0}` (milliseconds since the epoch)")]
    MissingParameter(&'static str),
    #[error("missing parameter `interval` (`hour` or `day`)")]
    MissingInterval,
    #[error("parameter `{name}` must be a non-negative integer number of milliseconds, got `{value}`")]
    BadMillis { name: &'static str, value: String },
    #[error("parameter `interval` must be `hour` or `day`, got `{0}`")]
    BadInterval(String),
    #[error("`from` must be before `to`")]
    EmptyRange,
    #[error("the range covers {0} buckets; at most 1000 are answered")]
    TooManyBuckets(u64),
    #[error("parameter `{name}` must be the start of a UTC hour (a multiple of 3600000), got {value}")]
    NotHourAligned { name: &'static str, value: EpochMillis },
    #[error("the range covers {0} hours; at most 744 (31 days) are answered")]
    RangeTooLong(u64),
}

impl RangeReject {
    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RangeReject::Query(r) => r.label(),
            RangeReject::TooManyBuckets(_) => "too_many_buckets",
            RangeReject::RangeTooLong(_) => "range_too_long",
            RangeReject::MissingInterval | RangeReject::BadInterval(_) => "bad_interval",
            RangeReject::MissingParameter(_)
            | RangeReject::BadMillis { .. }
            | RangeReject::EmptyRange
            | RangeReject::NotHourAligned { .. } => "bad_range",
        }
    }
}

/// The raw parameters of either range request.
#[derive(Default)]
struct RawRange {
    from: Option<String>,
    to: Option<String>,
    interval: Option<String>,
}

fn split_range(query: Option<&str>, with_interval: bool) -> Result<RawRange, RangeReject> {
    let mut raw = RawRange::default();
    let mut seen = Seen::default();
    for param in split_query(query)? {
        let Param { name, value } = param?;
        seen.once(&name)?;
        let value = value.unwrap_or_default();
        match name.as_str() {
            "from" => raw.from = Some(value),
            "to" => raw.to = Some(value),
            "interval" if with_interval => raw.interval = Some(value),
            _ => return Err(RejectReason::UnknownParameter(truncate_for_message(&name)).into()),
        }
    }
    Ok(raw)
}

/// ASCII digits only: no sign, no fraction, no spaces; fits in `i64`.
fn parse_millis(name: &'static str, raw: Option<String>) -> Result<EpochMillis, RangeReject> {
    let raw = raw.ok_or(RangeReject::MissingParameter(name))?;
    let bad = || RangeReject::BadMillis { name, value: truncate_for_message(&raw) };
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    raw.parse::<i64>().map_err(|_| bad())
}

/// Parses `from={ms}&to={ms}&interval=hour|day`, each exactly once.
///
/// # Errors
/// The first problem found; [`RangeReject::TooManyBuckets`] beyond [`MAX_BUCKETS`].
pub fn parse_timeseries(query: Option<&str>) -> Result<TimeseriesRequest, RangeReject> {
    let raw = split_range(query, true)?;
    let from = parse_millis("from", raw.from)?;
    let to = parse_millis("to", raw.to)?;
    let interval = match raw.interval {
        None => return Err(RangeReject::MissingInterval),
        Some(name) => {
            Interval::from_name(&name).ok_or_else(|| RangeReject::BadInterval(truncate_for_message(&name)))?
        }
    };
    let range = Range::new(from, to)?;
    let buckets = range.bucket_count(interval);
    if buckets > MAX_BUCKETS {
        return Err(RangeReject::TooManyBuckets(buckets));
    }
    Ok(TimeseriesRequest { range, interval })
}

/// Parses `from={ms}&to={ms}`, each exactly once and the start of a UTC hour:
/// the totals are kept per hour, so only whole hours can be answered exactly.
///
/// # Errors
/// The first problem found; [`RangeReject::RangeTooLong`] beyond [`MAX_AGGREGATE_HOURS`].
pub fn parse_aggregate(query: Option<&str>) -> Result<Range, RangeReject> {
    let raw = split_range(query, false)?;
    let from = parse_millis("from", raw.from)?;
    let to = parse_millis("to", raw.to)?;
    for (name, value) in [("from", from), ("to", to)] {
        if HourStart::from_aligned(value).is_none() {
            return Err(RangeReject::NotHourAligned { name, value });
        }
    }
    let range = Range::new(from, to)?;
    let hours = range.bucket_count(Interval::Hour);
    if hours > MAX_AGGREGATE_HOURS {
        return Err(RangeReject::RangeTooLong(hours));
    }
    Ok(range)
}

/// One bucket of a timeseries answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub start: EpochMillis,
    /// Written as the bucket's own fields (`unique_users`, then one per count).
    #[serde(flatten)]
    pub counts: HourCounts,
}

impl Bucket {
    pub fn new(start: EpochMillis, counts: HourCounts) -> Self {
        Bucket { start, counts }
    }
}

/// The answer of `GET /analytics/timeseries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeseries {
    pub interval: &'static str,
    pub from: EpochMillis,
    pub to: EpochMillis,
    pub buckets: Vec<Bucket>,
}

/// One bucket per interval of the request, with the stored counts of the
/// buckets that have some (keyed by bucket start) and zeros for the rest.
pub fn timeseries(req: TimeseriesRequest, stored: &BTreeMap<EpochMillis, HourCounts>) -> Timeseries {
    let buckets = req
        .range
        .bucket_starts(req.interval)
        .map(|start| Bucket::new(start, stored.get(&start).copied().unwrap_or_default()))
        .collect();
    Timeseries { interval: req.interval.name(), from: req.range.from_ms(), to: req.range.to_ms(), buckets }
}

/// The answer of `GET /analytics/aggregate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Aggregate {
    pub from: EpochMillis,
    pub to: EpochMillis,
    /// Written as the answer's own fields (`unique_users`, then one per count).
    #[serde(flatten)]
    pub counts: HourCounts,
    pub unique_users_exact: bool,
}

impl Aggregate {
    /// `counts`: exact event counts and the unique users as answered.
    pub fn new(range: Range, counts: HourCounts, unique_users_exact: bool) -> Self {
        Aggregate { from: range.from_ms(), to: range.to_ms(), counts, unique_users_exact }
    }
}

/// A sketch's estimate of a range's unique users, kept within what the exact
/// hour totals prove: at least the busiest hour's users, at most the sum over
/// the hours. Both bounds are true, so clamping only moves the estimate
/// closer (and makes a range with one active hour exact).
pub fn bounded_estimate(estimate: u64, busiest_hour: u64, sum_of_hours: u64) -> u64 {
    estimate.clamp(busiest_hour, sum_of_hours.max(busiest_hour))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D0: i64 = 20_000 * DAY_MS;

    fn ts(q: &str) -> Result<TimeseriesRequest, RangeReject> {
        parse_timeseries(Some(q))
    }

    #[test]
    fn timeseries_takes_from_to_and_interval() {
        let r = ts(&format!("from={D0}&to={}&interval=day", D0 + 2 * DAY_MS)).unwrap();
        assert_eq!((r.range.from_ms(), r.range.to_ms(), r.interval), (D0, D0 + 2 * DAY_MS, Interval::Day));
        let r = ts("interval=hour&to=7200000&from=1").unwrap();
        assert_eq!(r.range.bucket_starts(r.interval).collect::<Vec<_>>(), vec![0, HOUR_MS]);
    }

    #[test]
    fn refuses_bad_range_requests_with_a_reason() {
        use RangeReject::*;
        let cases: &[(&str, RangeReject)] = &[
            ("to=1&interval=hour", MissingParameter("from")),
            ("from=1&interval=hour", MissingParameter("to")),
            ("from=1&to=2", MissingInterval),
            ("from=&to=2&interval=hour", BadMillis { name: "from", value: "".into() }),
            ("from=-1&to=2&interval=hour", BadMillis { name: "from", value: "-1".into() }),
            ("from=1.5&to=2&interval=hour", BadMillis { name: "from", value: "1.5".into() }),
            (
                "from=1&to=99999999999999999999&interval=hour",
                BadMillis { name: "to", value: "99999999999999999999".into() },
            ),
            ("from=1&to=2&interval=week", BadInterval("week".into())),
            ("from=1&to=2&interval", BadInterval("".into())),
            ("from=2&to=2&interval=hour", EmptyRange),
            ("from=3&to=2&interval=hour", EmptyRange),
            ("from=1&from=1&to=2&interval=hour", Query(RejectReason::DuplicateParameter("from".into()))),
            ("from=1&to=2&interval=hour&timestamp=1", Query(RejectReason::UnknownParameter("timestamp".into()))),
            ("from=1&to=2&interval=h%zz", Query(RejectReason::BadPercentEncoding)),
            (&format!("from=0&to={}&interval=hour", 1001 * HOUR_MS), TooManyBuckets(1001)),
            (&format!("from=1&to={}&interval=hour", 1000 * HOUR_MS + 1), TooManyBuckets(1001)),
        ];
        for (q, want) in cases {
            assert_eq!(ts(q).as_ref().err(), Some(want), "query {q}");
            assert!(!want.to_string().contains('\n'), "one line: {want}");
        }
        assert_eq!(
            ts(&format!("from=0&to={}&interval=hour", 1000 * HOUR_MS)).unwrap().range.bucket_count(Interval::Hour),
            1000
        );
        assert_eq!(ts(&format!("from=0&to={}&interval=day", 1000 * DAY_MS)).map(|_| ()), Ok(()));
        assert_eq!(TooManyBuckets(1001).to_string(), "the range covers 1001 buckets; at most 1000 are answered");
    }

    #[test]
    fn the_end_of_time_is_a_valid_range() {
        let r = ts(&format!("from={}&to={}&interval=day", i64::MAX - 5 * DAY_MS, i64::MAX)).unwrap();
        assert_eq!(r.range.bucket_starts(r.interval).count() as u64, r.range.bucket_count(r.interval));
        assert_eq!(r.range.covering(r.interval).1, i64::MAX);
    }

    #[test]
    fn aggregate_takes_whole_hours_only() {
        assert_eq!(parse_aggregate(Some(&format!("from={D0}&to={}", D0 + HOUR_MS))), Range::new(D0, D0 + HOUR_MS));
        assert_eq!(
            parse_aggregate(Some(&format!("from={}&to={}", D0 + 1, D0 + HOUR_MS))),
            Err(RangeReject::NotHourAligned { name: "from", value: D0 + 1 })
        );
        assert_eq!(
            parse_aggregate(Some(&format!("from={D0}&to={}", D0 + 5))),
            Err(RangeReject::NotHourAligned { name: "to", value: D0 + 5 })
        );
        assert_eq!(parse_aggregate(Some(&format!("from={D0}&to={D0}"))), Err(RangeReject::EmptyRange));
        assert_eq!(
            parse_aggregate(Some(&format!("from={D0}&to={D0}&interval=hour"))),
            Err(RangeReject::Query(RejectReason::UnknownParameter("interval".into())))
        );
    }

    #[test]
    fn aggregate_answers_at_most_31_days() {
        let to = D0 + MAX_AGGREGATE_HOURS as i64 * HOUR_MS;
        assert_eq!(parse_aggregate(Some(&format!("from={D0}&to={to}"))), Range::new(D0, to));
        assert_eq!(
            parse_aggregate(Some(&format!("from={D0}&to={}", to + HOUR_MS))),
            Err(RangeReject::RangeTooLong(MAX_AGGREGATE_HOURS + 1))
        );
        let ten_years = parse_aggregate(Some(&format!("from=0&to={}", 3652 * DAY_MS)));
        assert_eq!(ten_years, Err(RangeReject::RangeTooLong(3652 * 24)));
        let reason = ten_years.unwrap_err().to_string();
        assert_eq!(reason, "the range covers 87648 hours; at most 744 (31 days) are answered");
        assert_eq!(
            RangeReject::RangeTooLong(1).to_string(),
            format!("the range covers 1 hours; at most {MAX_AGGREGATE_HOURS} (31 days) are answered")
        );
    }

    #[test]
    fn exact_unique_users_for_one_hour_or_one_whole_day_only() {
        let r = |from: i64, to: i64| Range::new(from, to).unwrap().unique_users();
        assert_eq!(r(D0 + 5 * HOUR_MS, D0 + 6 * HOUR_MS), UniqueUsers::Hour(HourStart::of(D0 + 5 * HOUR_MS)));
        assert_eq!(r(D0, D0 + HOUR_MS), UniqueUsers::Hour(HourStart::of(D0)));
        assert_eq!(r(D0, D0 + DAY_MS), UniqueUsers::Day(DayStart::of(D0)));
        assert_eq!(r(D0, D0 + 2 * HOUR_MS), UniqueUsers::Estimated);
        assert_eq!(r(D0 + HOUR_MS, D0 + HOUR_MS + DAY_MS), UniqueUsers::Estimated, "24 hours, not a UTC day");
        assert_eq!(r(D0, D0 + 2 * DAY_MS), UniqueUsers::Estimated);
        assert_eq!(r(D0 + 1, D0 + HOUR_MS + 1), UniqueUsers::Estimated);
    }

    #[test]
    fn empty_buckets_are_zeros_and_stored_ones_keep_their_counts() {
        let req = ts(&format!("from={}&to={}&interval=hour", D0 + 30 * 60_000, D0 + 3 * HOUR_MS)).unwrap();
        let counts = HourCounts { unique_users: 2, clicks: 3, impressions: 4 };
        let stored = BTreeMap::from([(D0 + HOUR_MS, counts), (D0 + 7 * HOUR_MS, counts)]);
        let answer = timeseries(req, &stored);
        assert_eq!(
            answer.buckets,
            vec![
                Bucket::new(D0, HourCounts::default()),
                Bucket::new(D0 + HOUR_MS, counts),
                Bucket::new(D0 + 2 * HOUR_MS, HourCounts::default())
            ]
        );
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            format!(
                r#"{{"interval":"hour","from":{},"to":{},"buckets":[{{"start":{D0},"unique_users":0,"clicks":0,"impressions":0}},{{"start":{},"unique_users":2,"clicks":3,"impressions":4}},{{"start":{},"unique_users":0,"clicks":0,"impressions":0}}]}}"#,
                D0 + 30 * 60_000,
                D0 + 3 * HOUR_MS,
                D0 + HOUR_MS,
                D0 + 2 * HOUR_MS
            )
        );
    }

    #[test]
    fn aggregate_answer_shape() {
        let a = Aggregate::new(
            Range::new(0, HOUR_MS).unwrap(),
            HourCounts { unique_users: 1, clicks: 2, impressions: 3 },
            true,
        );
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"from":0,"to":3600000,"unique_users":1,"clicks":2,"impressions":3,"unique_users_exact":true}"#
        );
    }

    #[test]
    fn estimates_stay_within_what_the_hours_prove() {
        assert_eq!(bounded_estimate(98, 100, 250), 100);
        assert_eq!(bounded_estimate(260, 100, 250), 250);
        assert_eq!(bounded_estimate(180, 100, 250), 180);
        assert_eq!(bounded_estimate(0, 0, 0), 0);
    }

    proptest! {
        #[test]
        fn buckets_tile_the_range_exactly(from in 0i64..400 * DAY_MS, len in 1i64..40 * DAY_MS, day in any::<bool>()) {
            let interval = if day { Interval::Day } else { Interval::Hour };
            let range = Range::new(from, from + len).unwrap();
            let starts: Vec<i64> = range.bucket_starts(interval).collect();
            prop_assert_eq!(starts.len() as u64, range.bucket_count(interval));
            // Aligned, consecutive, the first holds `from`, the last holds `to - 1`.
            prop_assert!(starts.iter().all(|s| s.rem_euclid(interval.length_ms()) == 0));
            prop_assert!(starts.windows(2).all(|w| w[1] - w[0] == interval.length_ms()));
            prop_assert!(starts[0] <= from && from < starts[0] + interval.length_ms());
            let last = *starts.last().unwrap();
            prop_assert!(last < from + len && from + len <= last + interval.length_ms());
            prop_assert_eq!(range.covering(interval), (starts[0], last + interval.length_ms()));
        }

        #[test]
        fn range_parsing_never_panics(q in "\\PC{0,200}") {
            let _ = parse_timeseries(Some(&q));
            let _ = parse_aggregate(Some(&q));
        }

        #[test]
        fn any_valid_range_round_trips(from in 0i64..1 << 50, len in 1i64..HOUR_MS * 999, day in any::<bool>()) {
            let interval = if day { "day" } else { "hour" };
            let r = ts(&format!("from={from}&to={}&interval={interval}", from + len)).unwrap();
            prop_assert_eq!((r.range.from_ms(), r.range.to_ms(), r.interval.name()), (from, from + len, interval));
        }
    }
}
