//! The promotions workload in the query service:
//!
//! - `GET /promotions/{id}` → `200 {"id", "price", "expiration_date"}` from
//!   the active generation, or `404` (no such id in it, or no generation
//!   active yet). The generation from a lease on the engine's pointer, the
//!   row from a cache keyed by generation or by primary key
//!   ([`crate::read_model::PromotionReader`]): a whole generation, never a mix.
//! - `GET /promotions/generations/{n}` → `{"generation", "state", "rows",
//!   "error"}` from the generations read model (through the engine's
//!   read-through reader), or `404`.
//! - `GET /promotions/generations` → the newest [`LISTED`] of them, newest first.

use std::sync::Arc;

use common::engine::http::{self, Body};
use common::engine::pg::PgError;
use hyper::{Response, StatusCode};

use ::query::engine::{QueryError, QueryWorkload, ReadError, Reader, Route};

use crate::line::PromotionId;
use crate::read_model::{newest_generations, Lookup, PromotionReader, StoredGeneration, LISTED};

/// `GET /promotions/{id}`'s prefix.
const PROMOTION: &str = "/promotions/";
/// `GET /promotions/generations/{n}`'s prefix.
const GENERATION: &str = "/promotions/generations/";
/// `GET /promotions/generations`.
const GENERATIONS: &str = "/promotions/generations";

/// The promotions and their generations.
pub struct Promotions {
    promotions: PromotionReader,
}

impl Promotions {
    /// With a row cache of `row_cache_mb` MB (`--promotions-row-cache-mb`, 0: none).
    pub fn new(row_cache_mb: u64, stores: &::query::engine::Stores) -> Self {
        Promotions { promotions: PromotionReader::new(row_cache_mb, stores.bulk_lease(&crate::read_model::PROMOTIONS)) }
    }
}

fn unavailable(e: PgError) -> QueryError {
    QueryError::Unavailable(ReadError::from(e))
}

impl QueryWorkload for Promotions {
    const NAME: &'static str = "promotions";
    type Row = StoredGeneration;

    fn routes(reader: Reader<Self>) -> Vec<Route> {
        let one = reader.clone();
        let generation = move |path: &str, _: Option<&str>| {
            let n = path.strip_prefix(GENERATION).and_then(|n| n.parse::<i64>().ok()).filter(|n| *n > 0);
            let reader = one.clone();
            Box::pin(async move {
                let Some(n) = n else {
                    return Err(QueryError::Rejected {
                        label: "bad_generation",
                        message: "the generation must be a positive number: GET /promotions/generations/<n>".into(),
                    });
                };
                get_generation(&reader, n).await
            }) as ::query::engine::Answer
        };
        let all = reader.clone();
        let list = move |_: &str, _: Option<&str>| {
            let reader = all.clone();
            Box::pin(async move { list_generations(&reader).await }) as ::query::engine::Answer
        };
        let promotion = move |path: &str, _: Option<&str>| {
            let id = path.strip_prefix(PROMOTION).map(PromotionId::parse);
            let reader = reader.clone();
            Box::pin(async move {
                let Some(Ok(id)) = id else {
                    return Err(QueryError::Rejected {
                        label: "bad_id",
                        message: "the id must be a UUID: GET /promotions/<uuid>".into(),
                    });
                };
                get_promotion(&reader, id).await
            }) as ::query::engine::Answer
        };
        // The first route that matches answers: the generations' paths before the ids'.
        vec![
            Route { path: GENERATION, usage: "GET /promotions/generations/<n>", handler: Arc::new(generation) },
            Route { path: GENERATIONS, usage: "GET /promotions/generations", handler: Arc::new(list) },
            Route { path: PROMOTION, usage: "GET /promotions/<uuid>", handler: Arc::new(promotion) },
        ]
    }
}

async fn get_promotion(reader: &Reader<Promotions>, id: PromotionId) -> Result<Response<Body>, QueryError> {
    match reader.workload().promotions.read(reader.pool(), &id).await.map_err(unavailable)? {
        Lookup::Found(_, body) => Ok(http::json(StatusCode::OK, body)),
        Lookup::Absent(g) => Err(QueryError::NotFound(format!("no promotion {id} in generation {g}"))),
        Lookup::NothingActive => Err(QueryError::NotFound(format!("no promotion {id}: no file is loaded yet"))),
    }
}

async fn get_generation(reader: &Reader<Promotions>, n: i64) -> Result<Response<Body>, QueryError> {
    let found = reader.read(&n).await?;
    // Version 0: no store has it (every written row has a rank of at least 1).
    if found.version == 0 {
        return Err(QueryError::NotFound(format!("no generation {n}")));
    }
    let mut status = found.row.0;
    status.generation = n;
    status.state = status.state.as_seen(n, answering(reader).await?);
    Ok(http::json(StatusCode::OK, status.to_json()))
}

/// The generation reads answer from now, which the states are answered by.
async fn answering(reader: &Reader<Promotions>) -> Result<Option<i64>, QueryError> {
    reader.workload().promotions.answering(reader.pool()).await.map_err(unavailable)
}

async fn list_generations(reader: &Reader<Promotions>) -> Result<Response<Body>, QueryError> {
    let answering = answering(reader).await?;
    let client = reader.pool().get().await.map_err(|e| unavailable(e.into()))?;
    let mut newest = newest_generations(&client).await.map_err(unavailable)?;
    for status in &mut newest {
        status.state = status.state.as_seen(status.generation, answering);
    }
    debug_assert!(newest.len() <= LISTED as usize);
    let body = serde_json::to_vec(&newest).expect("statuses always serialize");
    Ok(http::json(StatusCode::OK, body))
}
