//! Stored positions checked against the real broker's log bounds: a position
//! below the start of the log (records deleted by retention before they were
//! applied) stops with an alarm instead of silently skipping them, and one
//! beyond its end (a recreated topic) too.

use std::sync::Arc;
use std::time::Duration;

use common::engine::kafka::{check_position, PositionOutsideLog, BROKER_DEFAULT_REPLICATION};
use common::test_util::{delete_topics, isolated, unique_suffix};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[tokio::test]
async fn positions_outside_the_log_are_refused() {
    let (kafka, _, _) = isolated(&unique_suffix());
    let topic = kafka.events_topic.clone();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin.create_topics(&[NewTopic::new(&topic, 1, BROKER_DEFAULT_REPLICATION)], &opts).await.unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    for i in 0..10 {
        let key = format!("k{i}");
        producer.send(FutureRecord::to(&topic).key(&key).payload("v"), Duration::from_secs(10)).await.unwrap();
    }
    // Retention (here: an explicit delete) removes records 0..6.
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&topic, 0, Offset::Offset(6)).unwrap();
    admin.delete_records(&upto, &opts).await.unwrap();

    let consumer: Arc<BaseConsumer> =
        Arc::new(ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap());
    for ok in [6, 8, 10] {
        assert!(check_position(consumer.clone(), &topic, 0, ok).await.is_ok(), "{ok} lies within the log");
    }
    match check_position(consumer.clone(), &topic, 0, 2).await {
        Err(e @ PositionOutsideLog::BelowStart { start: 6, stored: 2, .. }) => {
            assert!(e.to_string().contains("refusing to skip them"), "{e}");
        }
        other => panic!("records 2..6 were never applied, yet: {other:?}"),
    }
    assert!(matches!(
        check_position(consumer, &topic, 0, 11).await,
        Err(PositionOutsideLog::BeyondEnd { end: 10, stored: 11, .. })
    ));
    delete_topics(&kafka).await;
}
