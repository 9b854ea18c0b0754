//! `ingest-worker create-topics`: creates the readings topic and its
//! dead-letter topic with the configured partition counts when they do not
//! exist, and reports the ones that do. It never changes an existing
//! topic: adding partitions would move device keys to other partitions and
//! break per-device order for readings already in flight.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;

use crate::settings::{client_config, KafkaArgs};

/// Settings of `ingest-worker create-topics`.
#[derive(Args, Clone, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Dead-letter topic (default: <KAFKA_TOPIC>.dlq)
    #[arg(long, env = "KAFKA_DLQ_TOPIC")]
    pub kafka_dlq_topic: Option<String>,

    /// Partitions of the readings topic: the most workers that can share the
    /// load (see README, "Choosing the partition count")
    #[arg(long, env = "READINGS_PARTITIONS", default_value_t = 12)]
    pub readings_partitions: i32,

    /// Partitions of the dead-letter topic
    #[arg(long, env = "DLQ_PARTITIONS", default_value_t = 1)]
    pub dlq_partitions: i32,

    /// Copies of each partition; -1 takes the cluster's default.replication.factor
    #[arg(long, env = "TOPIC_REPLICATION_FACTOR", default_value_t = -1, allow_hyphen_values = true)]
    pub replication_factor: i32,

    /// How long to wait for the cluster's metadata and for each creation
    #[arg(long, env = "TOPIC_ADMIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub admin_timeout_ms: u64,
}

/// What `create_topics` found or did for one topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created {
        partitions: i32,
    },
    Exists {
        partitions: i32,
    },
    /// Exists with fewer partitions than asked for; left as it is.
    Smaller {
        partitions: i32,
        wanted: i32,
    },
}

/// How many partitions `topic` has according to `metadata`; `None` when the
/// cluster does not know it (or reports it with an error).
pub fn partition_count(metadata: &Metadata, topic: &str) -> Option<i32> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
}

/// Creates whichever of the two topics is missing; returns each topic's outcome.
pub async fn create_topics(args: &TopicArgs) -> anyhow::Result<Vec<Named>> {
    anyhow::ensure!(
        args.readings_partitions >= 1 && args.dlq_partitions >= 1,
        "partition counts must be at least 1"
    );
    let timeout = Duration::from_millis(args.admin_timeout_ms);
    let admin: AdminClient<DefaultClientContext> = client_config(
        &[("bootstrap.servers", args.kafka.kafka_brokers.clone())],
        &[],
    )
    .create()
    .context("cannot create the Kafka admin client")?;
    let wanted = [
        (args.kafka.kafka_topic.clone(), args.readings_partitions),
        (
            args.kafka
                .dead_letter_topic(args.kafka_dlq_topic.as_deref()),
            args.dlq_partitions,
        ),
    ];
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .context("cannot read the cluster's topics")?;
    let (mut outcomes, missing) = compare(&metadata, &wanted);
    if !missing.is_empty() {
        outcomes.extend(create_missing(&admin, missing, args.replication_factor, timeout).await?);
    }
    Ok(outcomes)
}

/// A topic's name and what happened to it.
type Named = (String, Outcome);
/// A topic's name and its partition count.
type Wanted = (String, i32);

/// The outcome of each wanted topic the cluster has, and the missing ones.
fn compare(metadata: &Metadata, wanted: &[Wanted]) -> (Vec<Named>, Vec<Wanted>) {
    let mut outcomes = Vec::new();
    let mut missing = Vec::new();
    for (name, partitions) in wanted {
        match partition_count(metadata, name) {
            Some(found) if found < *partitions => outcomes.push((
                name.clone(),
                Outcome::Smaller {
                    partitions: found,
                    wanted: *partitions,
                },
            )),
            Some(found) => outcomes.push((name.clone(), Outcome::Exists { partitions: found })),
            None => missing.push((name.clone(), *partitions)),
        }
    }
    (outcomes, missing)
}

async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    missing: Vec<Wanted>,
    replication_factor: i32,
    timeout: Duration,
) -> anyhow::Result<Vec<Named>> {
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| {
            format!(
                "cannot create kafka topics {:?}: the cluster did not answer the request",
                missing.iter().map(|(name, _)| name).collect::<Vec<_>>()
            )
        })?;
    let mut outcomes = Vec::new();
    for ((name, partitions), result) in missing.into_iter().zip(results) {
        match result {
            Ok(_) => outcomes.push((name, Outcome::Created { partitions })),
            // Created meanwhile, e.g. by a second run of this command.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push((name, Outcome::Exists { partitions }))
            }
            Err((_, code)) => anyhow::bail!("cannot create kafka topic {name}: {code}"),
        }
    }
    Ok(outcomes)
}
