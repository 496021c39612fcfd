//! The query engine with a workload it was not written for (the test-only
//! exact sums of `common::test_util::sums`): its route is served behind the
//! same edge, its rows read through Redis and PostgreSQL with write-back, its
//! errors mapped to the same statuses. Real PostgreSQL and Redis.

use std::sync::Arc;

use common::engine::store::cache::{RedisStore, VersionedCache};
use common::test_util::sums::{self, SetSum, Sum};
use common::test_util::{drop_schema, isolated, unique_suffix};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use query::engine::{Answer, QueryError, QueryWorkload, Reader, Route, Stores};
use query::QueryApp;

struct Sums;

impl QueryWorkload for Sums {
    const NAME: &'static str = "sums";
    type Row = Sum;

    fn routes(reader: Reader<Self>) -> Vec<Route> {
        let handler = move |_: &str, query: Option<&str>| {
            let key = query.and_then(|q| q.strip_prefix("key=")).map(str::to_owned);
            let reader = reader.clone();
            Box::pin(async move {
                let key = key.ok_or(QueryError::Rejected { label: "missing_key", message: "key missing".into() })?;
                let sum = reader.read(&key).await?;
                Ok(common::engine::http::text(StatusCode::OK, format!("{}\n", sum.row.total)))
            }) as Answer
        };
        vec![Route { path: "/sums", usage: "GET /sums?key=<key>", handler: Arc::new(handler) }]
    }
}

async fn get(app: &QueryApp, uri: &str) -> (StatusCode, String) {
    let resp = app.handle(Request::get(uri).body(()).unwrap()).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_second_workload_registers_its_route_and_reads_through() {
    let (_, redis, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &[analytics::migrations::READ_MODELS]).await.unwrap();
    let client = pool.get().await.unwrap();
    sums::create_table(&client).await;
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let huge = i128::from(i64::MAX) * 5;
    sums::write(&tx, &[SetSum { key: "k".into(), total: huge }]).await.unwrap();
    tx.commit().await.unwrap();

    let store = RedisStore::connect(&redis).await.unwrap();
    let stores = Stores::new(pool.clone(), store.clone(), query::engine::Reuse::OFF);
    let (cfg, workloads) = platform::parse::query(["query"]);
    let ready: common::engine::http::ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let ops =
        common::engine::http::OpsRoutes { service: "query", metrics: common::engine::telemetry::prometheus(), ready };
    let mut routes = query::routes(&workloads, &stores);
    routes.extend(stores.register(Sums));
    let app = QueryApp::new(routes, ops, common::engine::edge::Edge::new(&cfg.edge, None), &stores);

    assert_eq!(get(&app, "/sums?key=k").await, (StatusCode::OK, format!("{huge}\n")));
    let cached = VersionedCache::<Sum>::new(store.clone()).get(&"k".to_owned()).await.unwrap();
    assert_eq!(cached.map(|v| v.row.total), Some(huge), "written back");
    assert_eq!(get(&app, "/sums?key=absent").await, (StatusCode::OK, "0\n".to_owned()));
    assert_eq!(get(&app, "/sums").await, (StatusCode::BAD_REQUEST, "key missing\n".to_owned()));
    let resp = app.handle(Request::post("/sums?key=k").body(()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    // The other workload is still there, and an unknown path lists both.
    assert_eq!(get(&app, "/analytics?timestamp=0").await.0, StatusCode::OK);
    let (status, listed) = get(&app, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for usage in ["GET /analytics?timestamp=<ms>", "GET /increment/<uuid>", "GET /sums?key=<key>"] {
        assert!(listed.starts_with("not found; ") && listed.contains(usage), "{usage}: {listed}");
    }
    common::test_util::clear_redis_prefix(&redis).await;
    drop_schema(&pg).await;
}
