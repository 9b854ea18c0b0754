//! Where simulated readings go: ingest-gateway over HTTP (one reading or a
//! batch per request, several requests in flight), straight into the Kafka
//! topic (as a fleet's own chargers would publish), or an NDJSON file.
//!
//! Nothing accepted is lost on the way: the gateway's 503 (broker down,
//! overloaded) is retried after its `Retry-After`, Kafka sends wait for
//! `acks=all`, and any refusal ends the run with the server's answer.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use reqwest::StatusCode;
use shared::domain::Reading;
use tokio::task::JoinSet;

/// Where to send, and how. `Debug` hides the API key.
#[derive(Clone)]
pub enum Destination {
    Gateway {
        /// Base URL of ingest-gateway.
        url: String,
        /// Readings per request; 1 sends a single JSON object, as the
        /// original API's clients do.
        batch_size: usize,
        /// Requests in flight at once.
        concurrency: usize,
        /// Sent as `Authorization: Bearer <key>` (a key with the ingest role).
        api_key: Option<String>,
    },
    Kafka {
        brokers: String,
        topic: String,
    },
    /// `-` writes to standard output.
    Ndjson {
        path: PathBuf,
    },
}

/// What a run sent.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub messages: u64,
    pub requests: u64,
    /// Requests repeated after a 503 or a connection failure.
    pub retries: u64,
    pub elapsed: Duration,
    /// Per request (gateway) in completion order; empty for other destinations.
    pub latencies: Vec<Duration>,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of request latencies, if any were recorded.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        Some(sorted[((last as f64) * q).round() as usize])
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} messages in {:.1} s ({:.0}/s)",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.rate()
        )?;
        if self.requests > 0 {
            write!(f, ", {} requests, {} retried", self.requests, self.retries)?;
            if let (Some(p50), Some(p99)) =
                (self.latency_quantile(0.5), self.latency_quantile(0.99))
            {
                write!(
                    f,
                    ", latency p50 {:.2} ms, p99 {:.2} ms",
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                )?;
            }
        }
        Ok(())
    }
}

/// Sends batches of readings to one destination; [`Sender::finish`] waits
/// until everything is acknowledged.
pub struct Sender {
    inner: Inner,
    progress: ProgressBar,
    started: Instant,
    summary: Summary,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Gateway {
                url,
                batch_size,
                concurrency,
                api_key,
            } => f
                .debug_struct("Gateway")
                .field("url", url)
                .field("batch_size", batch_size)
                .field("concurrency", concurrency)
                .field("api_key", &api_key.as_ref().map(|_| "<hidden>"))
                .finish(),
            Destination::Kafka { brokers, topic } => f
                .debug_struct("Kafka")
                .field("brokers", brokers)
                .field("topic", topic)
                .finish(),
            Destination::Ndjson { path } => f.debug_struct("Ndjson").field("path", path).finish(),
        }
    }
}

enum Inner {
    Gateway {
        client: reqwest::Client,
        url: String,
        batch_size: usize,
        concurrency: usize,
        in_flight: JoinSet<anyhow::Result<RequestOutcome>>,
    },
    Kafka {
        producer: ThreadedProducer<DeliveryCounter>,
        topic: String,
    },
    Ndjson(Box<dyn std::io::Write + Send>),
}

struct RequestOutcome {
    readings: u64,
    retries: u64,
    latency: Duration,
}

impl Sender {
    /// `progress` counts messages as they are acknowledged.
    pub fn new(destination: &Destination, progress: ProgressBar) -> anyhow::Result<Self> {
        let inner = match destination {
            Destination::Gateway {
                url,
                batch_size,
                concurrency,
                api_key,
            } => Inner::Gateway {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(*concurrency)
                    .default_headers(authorization(api_key.as_deref())?)
                    .build()?,
                url: format!("{}/v1/ingest", url.trim_end_matches('/')),
                batch_size: (*batch_size).max(1),
                concurrency: (*concurrency).max(1),
                in_flight: JoinSet::new(),
            },
            Destination::Kafka { brokers, topic } => {
                let producer =
                    kafka_kit::reliable_producer_config(brokers, Duration::from_secs(300))
                        .create_with_context(DeliveryCounter::default())
                        .context("cannot create the Kafka producer")?;
                Inner::Kafka {
                    producer,
                    topic: topic.clone(),
                }
            }
            Destination::Ndjson { path } => {
                let out: Box<dyn std::io::Write + Send> = if path.as_os_str() == "-" {
                    Box::new(std::io::BufWriter::new(std::io::stdout()))
                } else {
                    Box::new(std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("cannot create {}", path.display()))?,
                    ))
                };
                Inner::Ndjson(out)
            }
        };
        Ok(Self {
            inner,
            progress,
            started: Instant::now(),
            summary: Summary::default(),
        })
    }

    /// Queues `readings`; returns once they are sent or in flight (at most
    /// `concurrency` requests, or the producer's bounded queue).
    pub async fn send(&mut self, readings: &[Reading]) -> anyhow::Result<()> {
        match &mut self.inner {
            Inner::Gateway {
                client,
                url,
                batch_size,
                concurrency,
                in_flight,
            } => {
                for chunk in readings.chunks(*batch_size) {
                    let body = request_body(chunk, *batch_size == 1)?;
                    while in_flight.len() >= *concurrency {
                        let done = in_flight.join_next().await.expect("a request is in flight");
                        record(&mut self.summary, &self.progress, done??);
                    }
                    let (client, url) = (client.clone(), url.clone());
                    let n = chunk.len() as u64;
                    in_flight.spawn(async move { post(&client, &url, body, n).await });
                }
            }
            Inner::Kafka { producer, topic } => {
                for reading in readings {
                    let payload = shared::wire::encode(reading)?;
                    let key = reading.device_id().as_str();
                    let mut record = BaseRecord::to(topic).key(key).payload(&payload);
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                                ),
                                returned,
                            )) => {
                                // The bounded queue is full: wait for the broker.
                                record = returned;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                self.progress.set_position(producer.context().delivered());
                            }
                            Err((error, _)) => return Err(error).context("cannot queue a message"),
                        }
                    }
                }
                self.progress.set_position(producer.context().delivered());
                producer.context().check()?;
            }
            Inner::Ndjson(out) => {
                for reading in readings {
                    out.write_all(&shared::wire::encode(reading)?)?;
                    out.write_all(b"\n")?;
                }
                self.summary.messages += readings.len() as u64;
                self.progress.inc(readings.len() as u64);
            }
        }
        Ok(())
    }

    /// Waits for every message to be acknowledged (or written) and returns what was sent.
    pub async fn finish(mut self) -> anyhow::Result<Summary> {
        match &mut self.inner {
            Inner::Gateway { in_flight, .. } => {
                while let Some(done) = in_flight.join_next().await {
                    record(&mut self.summary, &self.progress, done??);
                }
            }
            Inner::Kafka { producer, .. } => {
                // flush() blocks until every delivery report is in.
                tokio::task::block_in_place(|| producer.flush(Duration::from_secs(300)))
                    .context("messages still unacknowledged after 300 s")?;
                producer.context().check()?;
                self.summary.messages = producer.context().delivered();
                self.progress.set_position(self.summary.messages);
            }
            Inner::Ndjson(out) => out.flush()?,
        }
        self.summary.elapsed = self.started.elapsed();
        self.progress.finish();
        Ok(self.summary)
    }
}

fn record(summary: &mut Summary, progress: &ProgressBar, outcome: RequestOutcome) {
    summary.messages += outcome.readings;
    summary.requests += 1;
    summary.retries += outcome.retries;
    summary.latencies.push(outcome.latency);
    progress.inc(outcome.readings);
}

/// One JSON object, or an array of them.
fn request_body(readings: &[Reading], single: bool) -> anyhow::Result<Vec<u8>> {
    if single {
        if let [reading] = readings {
            return Ok(shared::wire::encode(reading)?);
        }
    }
    let mut body = Vec::with_capacity(readings.len() * 160);
    body.push(b'[');
    for (i, reading) in readings.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend(shared::wire::encode(reading)?);
    }
    body.push(b']');
    Ok(body)
}

/// How long a run keeps retrying an unreachable or unavailable gateway.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// Posts one request until the gateway accepts it. 503 and connection
/// failures are retried (the broker or the gateway may be starting or
/// recovering); any other refusal is an error with the gateway's answer.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    readings: u64,
) -> anyhow::Result<RequestOutcome> {
    let first_try = Instant::now();
    let mut retries = 0;
    loop {
        let sent = Instant::now();
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let wait = match response {
            Ok(response) if response.status().is_success() => {
                return Ok(RequestOutcome {
                    readings,
                    retries,
                    latency: sent.elapsed(),
                });
            }
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map_or(Duration::from_millis(500), Duration::from_secs),
            Ok(response) => {
                let status = response.status();
                let answer = response.text().await.unwrap_or_default();
                anyhow::bail!("the gateway refused a request with {status}: {answer}");
            }
            Err(error) if first_try.elapsed() < GIVE_UP_AFTER => {
                tracing::debug!(%error, "gateway unreachable, retrying");
                Duration::from_millis(500)
            }
            Err(error) => return Err(error).context("the gateway stayed unreachable"),
        };
        anyhow::ensure!(
            first_try.elapsed() < GIVE_UP_AFTER,
            "the gateway stayed unavailable (503) for {} s",
            GIVE_UP_AFTER.as_secs()
        );
        retries += 1;
        tokio::time::sleep(wait).await;
    }
}

/// Counts deliveries; remembers the first failure.
#[derive(Default, Clone)]
pub struct DeliveryCounter {
    delivered: Arc<AtomicU64>,
    first_failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl DeliveryCounter {
    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn check(&self) -> anyhow::Result<()> {
        match self.first_failure.lock().expect("not poisoned").as_ref() {
            Some(error) => anyhow::bail!("the broker did not take a message: {error}"),
            None => Ok(()),
        }
    }
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                let mut first = self.first_failure.lock().expect("not poisoned");
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// The `Authorization` header for `api_key`, marked sensitive so it is never logged.
fn authorization(api_key: Option<&str>) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}
