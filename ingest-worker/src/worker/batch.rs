//! A batch being collected from the topic: the readings that decoded, the
//! messages that did not (bound for the dead-letter topic), and the highest
//! offset seen per partition (stored only after the batch is durable).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rdkafka::message::{BorrowedMessage, Message};
use shared::domain::Reading;
use shared::wire::{decode_message, ValidationRules};

/// The instant "at most N minutes in the future" is measured from: the
/// message's Kafka timestamp when it is ahead of this host's clock (by at
/// most the allowance itself), else now. A reading the gateway accepted near
/// the limit is then not refused here because this host's clock lags the
/// gateway's, while a producer's timestamp cannot widen the window by more
/// than one allowance.
fn future_check_reference(
    message: &BorrowedMessage<'_>,
    rules: &ValidationRules,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    message
        .timestamp()
        .to_millis()
        .and_then(DateTime::from_timestamp_millis)
        .filter(|produced_at| *produced_at > now)
        .map_or(now, |produced_at| produced_at.min(now + rules.max_future))
}

/// A message that could not become a reading, with why.
pub struct Rejected {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

#[derive(Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejected>,
    /// Highest offset consumed per partition of the readings topic.
    pub last_offsets: BTreeMap<i32, i64>,
}

impl Batch {
    /// Number of messages in the batch, readings and rejects alike.
    pub fn len(&self) -> usize {
        self.readings.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes and validates a message and files it as a reading or a reject.
    pub fn add(
        &mut self,
        message: &BorrowedMessage<'_>,
        rules: &ValidationRules,
        now: DateTime<Utc>,
    ) {
        let reference = future_check_reference(message, rules, now);
        let decoded = match message.payload() {
            None | Some([]) => Err("empty payload".to_owned()),
            Some(payload) => {
                decode_message(payload, rules, reference).map_err(|error| error.to_string())
            }
        };
        match decoded {
            Ok(reading) => self.readings.push(reading),
            Err(reason) => self.rejected.push(Rejected {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                partition: message.partition(),
                offset: message.offset(),
                reason,
            }),
        }
        let last = self
            .last_offsets
            .entry(message.partition())
            .or_insert(message.offset());
        *last = (*last).max(message.offset());
    }
}
