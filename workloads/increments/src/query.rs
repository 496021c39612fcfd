//! The increments workload in the query service: `GET /increment/{key}` →
//! `{"key": "<uuid>", "value": <sum>}` (the sum as a JSON number, exact at
//! any size), or 404 for a key that was never incremented.

use std::sync::Arc;

use crate::read_model::StoredSum;
use crate::{IncrementKey, IncrementRow};
use common::engine::http::{self, Body};
use hyper::{Response, StatusCode};

use ::query::engine::{QueryError, QueryWorkload, Reader, Route};

/// The route's prefix: the key follows it.
const PREFIX: &str = "/increment/";

/// The per-key sums read model.
pub struct Increments;

impl QueryWorkload for Increments {
    const NAME: &'static str = "increments";
    type Row = StoredSum;

    fn routes(reader: Reader<Self>) -> Vec<Route> {
        let handler = move |path: &str, _: Option<&str>| {
            let key = path.strip_prefix(PREFIX).map(IncrementKey::parse);
            let reader = reader.clone();
            Box::pin(async move {
                let key = match key {
                    Some(Ok(key)) => key,
                    _ => {
                        return Err(QueryError::Rejected {
                            label: "bad_key",
                            message: "the key must be a UUID: GET /increment/<uuid>".into(),
                        })
                    }
                };
                get(&reader, key).await
            }) as ::query::engine::Answer
        };
        vec![Route { path: PREFIX, usage: "GET /increment/<uuid>", handler: Arc::new(handler) }]
    }
}

async fn get(reader: &Reader<Increments>, key: IncrementKey) -> Result<Response<Body>, QueryError> {
    let found = reader.read(&key).await?;
    // Version 0: no store has the key (every written row has an offset of at least 1).
    if found.version == 0 {
        return Err(QueryError::NotFound(format!("no increment for key {key}")));
    }
    let body = IncrementRow { key, sum: found.row.0 }.to_json();
    Ok(http::json(StatusCode::OK, body))
}
