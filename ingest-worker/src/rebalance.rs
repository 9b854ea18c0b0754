//! Consumer-group bookkeeping: the consumer context that notes which
//! partitions a rebalance took away, so the consume loop can drop what it
//! had buffered from them instead of writing it after it lost them.
//!
//! librdkafka runs these callbacks inside `recv()`, on the loop's own task,
//! never while a batch is being flushed: so after `recv()` returns, the loop
//! prunes its open batch before adding anything to it, and a flush never
//! stores an offset for a partition revoked before it began. What was
//! dropped was never committed, so the partition's new owner reads it again.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::pipeline::Backlog;

pub struct WorkerContext {
    revoked: Mutex<Vec<i32>>,
    /// Where the statistics' consumer lag is told.
    backlog: Arc<Backlog>,
}

impl WorkerContext {
    pub fn new(backlog: Arc<Backlog>) -> Self {
        Self {
            revoked: Mutex::default(),
            backlog,
        }
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(
            &mut *self
                .revoked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements()
        .iter()
        .map(|element| element.partition())
        .collect()
}

impl ClientContext for WorkerContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the
    /// consumer lag of each assigned partition, in messages, for /metrics
    /// and summed for the [`Backlog`].
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut total: Option<i64> = None;
        for topic in statistics.topics.values() {
            for (&partition, stats) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a
                // negative lag means not known yet.
                if partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!("energy_worker_consumer_lag_messages", "partition" => partition.to_string())
                        .set(stats.consumer_lag as f64);
                    *total.get_or_insert(0) += stats.consumer_lag;
                }
            }
        }
        self.backlog.record_lag(total.unwrap_or(-1));
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                metrics::counter!("energy_worker_rebalances_total", "kind" => "revoke")
                    .increment(1);
                let revoked = partitions(list);
                tracing::info!(partitions = ?revoked, "partitions revoked");
                self.revoked
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .extend(revoked);
            }
            Rebalance::Assign(list) => {
                metrics::counter!("energy_worker_rebalances_total", "kind" => "assign")
                    .increment(1);
                tracing::info!(partitions = ?partitions(list), "partitions assigned")
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}
