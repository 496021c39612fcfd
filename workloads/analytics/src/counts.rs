//! The counts of the analytics workload: the one typed definition every
//! shape of a count is derived from.
//!
//! [`with_kinds!`] holds the list: each event kind, its name in the HTTP API,
//! its symbol in the Avro `EventKind` enum, the count it feeds (the field of
//! [`HourCounts`], the PostgreSQL column, the JSON and CSV name) and its Redis
//! hash field. Everything else is generated from it or loops over it:
//! [`EventKind`] and its names, [`HourCounts`], the Redis fields and
//! PostgreSQL columns ([`COUNT_FIELDS`], which also add missing count columns
//! at startup, see `read_model::pg::ensure_count_columns`), the processor's
//! state rows, the Avro wire structs (`wire`), the CSV and JSON answers.
//!
//! To add a count, "page views" say (see docs/architecture.md, "Add a count"):
//! 1. one line here: `(PageView, "pageview", "PAGE_VIEW", page_views, "p")`;
//! 2. `common/schemas/event.v<N+1>.avsc`: the event schema with the new symbol;
//! 3. `common/schemas/hour_aggregate.v<N+1>.avsc`: the aggregate schema with
//!    the new count field (`"type": "long", "default": 0`).
//!
//! The schema versions are picked up by the build (`common/build.rs`); a
//! newest schema that does not carry exactly these kinds and counts fails the
//! tests (`wire::tests::the_newest_schemas_carry_exactly_the_defined_counts`).

use serde::Serialize;

/// Where one count lives: its field in the Redis hash of an hour and its
/// column in PostgreSQL (from which the tables' declarations are built,
/// [`crate::read_model`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub redis: &'static str,
    pub column: &'static str,
}

/// Calls `$then!` with the list of event kinds:
/// `(Variant, "api name", "AVRO_SYMBOL", count_field, "redis field")`.
#[macro_export]
macro_rules! with_kinds {
    ($then:ident) => {
        $then! {
            (Click, "click", "CLICK", clicks, "c"),
            (Impression, "impression", "IMPRESSION", impressions, "i"),
        }
    };
}

macro_rules! define_counts {
    ($(($kind:ident, $name:literal, $symbol:literal, $count:ident, $redis:literal),)+) => {
        /// What happened: the kinds of event of the workload, one per count.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($kind,)+
        }

        impl EventKind {
            /// Every kind, in the order of the list.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$kind,)+];

            /// Parses the name used by the HTTP API (`click`, `impression`).
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(EventKind::$kind),)+
                    _ => None,
                }
            }

            /// The name in the HTTP API.
            pub fn name(self) -> &'static str {
                match self {
                    $(EventKind::$kind => $name,)+
                }
            }

            /// The symbol of the Avro `EventKind` enum.
            pub fn symbol(self) -> &'static str {
                match self {
                    $(EventKind::$kind => $symbol,)+
                }
            }

            /// The kind of an Avro `EventKind` symbol.
            pub fn from_symbol(symbol: &str) -> Option<Self> {
                match symbol {
                    $($symbol => Some(EventKind::$kind),)+
                    _ => None,
                }
            }
        }

        /// Counts of one hour (or day, or range), for one partition or summed
        /// over partitions: the distinct users and one count per [`EventKind`].
        /// Serialized (JSON answers) with the count names as keys.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct HourCounts {
            pub unique_users: u64,
            $(pub $count: u64,)+
        }

        impl HourCounts {
            /// No users, no events (`Default`, usable in a `const`).
            pub const ZERO: HourCounts = HourCounts { unique_users: 0, $($count: 0,)+ };

            /// Counts one event of `kind` (not its user: the caller owns the set).
            pub fn add(&mut self, kind: EventKind) {
                match kind {
                    $(EventKind::$kind => self.$count += 1,)+
                }
            }

            /// The count `kind` feeds.
            pub fn of(&self, kind: EventKind) -> u64 {
                match kind {
                    $(EventKind::$kind => self.$count,)+
                }
            }

            /// Combines the counts of two disjoint user populations (two partitions).
            ///
            /// Users are partitioned by key, so one user's events are all in one
            /// partition and unique users add up exactly.
            pub fn merge(self, other: HourCounts) -> HourCounts {
                HourCounts { unique_users: self.unique_users + other.unique_users, $($count: self.$count + other.$count,)+ }
            }

            /// The values in the order of [`COUNT_FIELDS`].
            pub fn to_array(self) -> [u64; COUNTS] {
                [self.unique_users, $(self.$count,)+]
            }

            /// The counts from values in the order of [`COUNT_FIELDS`].
            pub fn from_array(values: [u64; COUNTS]) -> HourCounts {
                let mut v = values.into_iter();
                let mut next = || v.next().expect("COUNTS values");
                HourCounts { unique_users: next(), $($count: next(),)+ }
            }
        }

        /// How many values a row of counts holds: the unique users, then one per kind.
        pub const COUNTS: usize = 1 + [$($name,)+].len();

        /// Where each value of [`HourCounts`] lives, in the order of
        /// [`HourCounts::to_array`]: its Redis hash field and its PostgreSQL column
        /// (also its JSON and CSV name).
        pub const COUNT_FIELDS: [Field; COUNTS] =
            [Field { redis: "u", column: "unique_users" }, $(Field { redis: $redis, column: stringify!($count) },)+];
    };
}

with_kinds!(define_counts);

impl HourCounts {
    /// The `text/plain` answer of `GET /analytics`: one `name,value` line per value.
    pub fn to_csv(self) -> String {
        COUNT_FIELDS.iter().zip(self.to_array()).map(|(f, v)| format!("{},{v}\n", f.column)).collect()
    }
}

impl EventKind {
    /// The kinds' API names, for messages: `` `click` or `impression` ``.
    pub fn names_for_message() -> String {
        let names: Vec<String> = EventKind::ALL.iter().map(|k| format!("`{}`", k.name())).collect();
        match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recipe's first step, tried: the same generator with one more kind
    /// yields every shape of the new count, with nothing else written by hand.
    // The generated items this test does not call are the real list's.
    #[allow(dead_code)]
    mod one_more_count {
        use serde::Serialize;

        use crate::counts::Field;

        define_counts! {
            (Click, "click", "CLICK", clicks, "c"),
            (Impression, "impression", "IMPRESSION", impressions, "i"),
            (PageView, "pageview", "PAGE_VIEW", page_views, "p"),
        }

        impl HourCounts {
            pub fn to_csv(self) -> String {
                COUNT_FIELDS.iter().zip(self.to_array()).map(|(f, v)| format!("{},{v}\n", f.column)).collect()
            }
        }

        #[test]
        fn a_third_count_gets_its_kind_field_column_redis_field_csv_and_json() {
            assert_eq!(EventKind::from_name("pageview"), Some(EventKind::PageView));
            assert_eq!(EventKind::PageView.symbol(), "PAGE_VIEW");
            let mut counts = HourCounts { unique_users: 1, ..HourCounts::default() };
            for kind in [EventKind::PageView, EventKind::PageView, EventKind::Click] {
                counts.add(kind);
            }
            assert_eq!(counts.of(EventKind::PageView), 2);
            assert_eq!(counts.merge(counts).page_views, 4);
            assert_eq!(COUNT_FIELDS[3], Field { redis: "p", column: "page_views" });
            assert_eq!(HourCounts::from_array(counts.to_array()), counts);
            assert_eq!(counts.to_csv(), "unique_users,1\nclicks,1\nimpressions,0\npage_views,2\n");
            assert_eq!(
                serde_json::to_string(&counts).unwrap(),
                r#"{"unique_users":1,"clicks":1,"impressions":0,"page_views":2}"#
            );
        }
    }

    #[test]
    fn every_shape_of_a_count_comes_from_the_list() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(*kind));
            assert_eq!(EventKind::from_symbol(kind.symbol()), Some(*kind));
            let mut counts = HourCounts::default();
            counts.add(*kind);
            assert_eq!(counts.of(*kind), 1);
            assert_eq!(counts.to_array().iter().sum::<u64>(), 1);
        }
        let counts = HourCounts { unique_users: 1, clicks: 2, impressions: 3 };
        assert_eq!(HourCounts::from_array(counts.to_array()), counts);
        assert_eq!(counts.to_csv(), "unique_users,1\nclicks,2\nimpressions,3\n");
        assert_eq!(COUNT_FIELDS.len(), 1 + EventKind::ALL.len());
        assert_eq!(EventKind::names_for_message(), "`click` or `impression`");
        assert_eq!(serde_json::to_string(&counts).unwrap(), r#"{"unique_users":1,"clicks":2,"impressions":3}"#);
    }
}
