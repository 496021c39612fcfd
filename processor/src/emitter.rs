//! The aggregates-topic adapter: absolute (hour, partition) counts tagged with
//! the input offset they reflect.

use std::time::Duration;

use common::avro::{encode_hour_aggregate, HourAggregate};
use common::config::KafkaConfig;
use common::kafka::{self, ProducerTuning};
use futures::future::try_join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

pub struct AggregateEmitter {
    producer: FutureProducer,
    topic: String,
}

impl AggregateEmitter {
    /// # Errors
    /// When librdkafka rejects the configuration.
    pub fn new(kafka_cfg: &KafkaConfig, delivery_timeout: Duration) -> Result<Self, KafkaError> {
        let tuning =
            ProducerTuning { linger: Duration::from_millis(1), delivery_timeout, queue_max_messages: 1_000_000 };
        let producer = kafka::producer_config(kafka_cfg, "processor", tuning).create()?;
        Ok(AggregateEmitter { producer, topic: kafka_cfg.aggregates_topic.clone() })
    }

    /// Sends the aggregates and waits until the broker has all of them.
    ///
    /// # Errors
    /// The first delivery failure. The caller must then stop: the state store
    /// is ahead of what was emitted, and only a restart (which re-emits every
    /// restored hour) brings the sinks back in line.
    pub async fn emit(&self, aggs: &[HourAggregate]) -> Result<(), KafkaError> {
        let sends = aggs.iter().map(|a| {
            let key = a.key();
            let payload = encode_hour_aggregate(a);
            async move {
                let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
                self.producer.send(record, Timeout::Never).await.map(|_| ()).map_err(|(e, _)| e)
            }
        });
        try_join_all(sends).await?;
        Ok(())
    }

    pub fn flush(&self, limit: Duration) -> Result<(), KafkaError> {
        self.producer.flush(limit)
    }
}
