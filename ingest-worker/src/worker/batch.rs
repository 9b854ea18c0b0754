//! A batch being collected from the topic: the readings that decoded, the
//! messages that did not (bound for the dead-letter topic), and the highest
//! offset seen per partition (stored only after the batch is durable).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rdkafka::message::{BorrowedMessage, Message};
use shared::domain::Reading;
use shared::wire::{decode_message, ValidationRules};

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
        let decoded = match message.payload() {
            None | Some([]) => Err("empty payload".to_owned()),
            Some(payload) => decode_message(payload, rules, now).map_err(|error| error.to_string()),
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
