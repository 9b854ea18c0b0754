//! The gateway's OpenAPI 3 description, served at `/openapi.json`: generated
//! from the `#[utoipa::path]` annotation on each handler, which also builds
//! the router (`utoipa_axum::routes!`), so no route goes undescribed.
//!
//! The request examples are made when the description is asked for, a
//! minute in the past: a reading must be recent (within the retention, at
//! most five minutes ahead), so fixed example timestamps would go stale.

use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::OpenApi as Description;
use utoipa::{IntoResponses, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Energy Ingestion Engine: ingest-gateway",
        description = "Validates telemetry of electric vehicles and the smart meters of their \
            chargers and publishes it to Kafka, answering 202 only once Kafka has acknowledged \
            every reading. A request is all or nothing: one invalid reading and nothing is \
            published. Retrying a request is safe: a reading stored twice is stored once.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "ingest", description = "Readings in"),
        (name = "operations", description = "Probes, metrics and this description")
    ),
    components(schemas(Reading, crate::error::ReadingError))
)]
pub struct ApiDoc;

/// One reading, in the original API's camelCase JSON. Unknown fields are
/// ignored. Ids: 1–64 characters, no control characters, no surrounding
/// whitespace. Timestamps: RFC 3339 with an explicit offset, within the
/// retention (90 days by default) and at most 300 s in the future.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)] // describes the wire format; shared::wire decodes it
pub enum Reading {
    /// What a vehicle's battery management reports.
    Vehicle {
        #[serde(rename = "vehicleId")]
        #[schema(min_length = 1, max_length = 64)]
        vehicle_id: String,
        /// State of charge, percent.
        #[schema(minimum = 0, maximum = 100)]
        soc: f64,
        /// DC energy stored since the previous reading, kWh. Exactly one of
        /// this and `kwhRegisterDc`.
        #[serde(rename = "kwhDeliveredDc")]
        #[schema(minimum = 0, maximum = 1000000)]
        kwh_delivered_dc: Option<f64>,
        /// Instead of `kwhDeliveredDc`: the battery system's cumulative DC
        /// count, kWh. The interval's energy is derived from the previous
        /// reading in event time (a lower count is a reset: the new count is
        /// the energy since; a rise faster than REGISTER_MAX_KW is not
        /// counted); the first register reading carries none.
        #[serde(rename = "kwhRegisterDc")]
        #[schema(minimum = 0, maximum = 1000000000)]
        kwh_register_dc: Option<f64>,
        /// °C.
        #[serde(rename = "batteryTemp")]
        #[schema(minimum = -60, maximum = 120)]
        battery_temp: f64,
        #[schema(format = DateTime)]
        timestamp: String,
    },
    /// What a charger's smart meter reports.
    Meter {
        #[serde(rename = "meterId")]
        #[schema(min_length = 1, max_length = 64)]
        meter_id: String,
        /// AC energy drawn since the previous reading, kWh. Exactly one of
        /// this and `kwhRegisterAc`.
        #[serde(rename = "kwhConsumedAc")]
        #[schema(minimum = 0, maximum = 1000000)]
        kwh_consumed_ac: Option<f64>,
        /// Instead of `kwhConsumedAc`: the meter's cumulative register
        /// (OCPP `Energy.Active.Import.Register`), kWh, derived into
        /// intervals as `kwhRegisterDc` is.
        #[serde(rename = "kwhRegisterAc")]
        #[schema(minimum = 0, maximum = 1000000000)]
        kwh_register_ac: Option<f64>,
        /// Volts.
        #[schema(minimum = 0, maximum = 2000)]
        voltage: f64,
        #[schema(format = DateTime)]
        timestamp: String,
    },
    /// From `timestamp` on, the vehicle charges through the meter; a null
    /// meter ends its assignment.
    Assignment {
        #[serde(rename = "vehicleId")]
        #[schema(min_length = 1, max_length = 64)]
        vehicle_id: String,
        #[serde(rename = "meterId")]
        #[schema(min_length = 1, max_length = 64)]
        meter_id: Option<String>,
        #[schema(format = DateTime)]
        timestamp: String,
    },
}

/// One reading, or an array of up to GATEWAY_MAX_BATCH_READINGS of them.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum IngestBody {
    One(Reading),
    Many(Vec<Reading>),
}

/// The 202 answer, as the original API gave it.
#[derive(serde::Serialize, ToSchema)]
pub struct Accepted {
    #[schema(example = "Data ingested successfully")]
    pub message: &'static str,
    /// How many readings Kafka acknowledged.
    pub accepted: usize,
}

/// An error answer of the ingest route; `errors` lists each invalid field
/// of each reading (422).
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct IngestError {
    pub error: String,
    #[schema(nullable = false)]
    pub errors: Option<Vec<crate::error::ReadingError>>,
}

/// The errors `POST /v1/ingest` may answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum IngestErrors {
    /// The body is not JSON (NDJSON: the line is named), not an object or array, or empty.
    #[response(status = 400)]
    Malformed(#[to_schema] IngestError),
    /// No API key, or an unknown one.
    #[response(status = 401)]
    Unauthorized(#[to_schema] IngestError),
    /// The API key lacks the ingest role.
    #[response(status = 403)]
    Forbidden(#[to_schema] IngestError),
    /// The body is over GATEWAY_MAX_BODY_BYTES, or has more than GATEWAY_MAX_BATCH_READINGS readings.
    #[response(status = 413)]
    TooLarge(#[to_schema] IngestError),
    /// A Content-Type other than JSON or NDJSON.
    #[response(status = 415)]
    UnsupportedMediaType(#[to_schema] IngestError),
    /// A reading is invalid; nothing was published. `errors` names each problem.
    #[response(status = 422)]
    Invalid(#[to_schema] IngestError),
    /// Kafka did not acknowledge in time, or the gateway is at its limit. Retry after `Retry-After` seconds.
    #[response(status = 503)]
    Unavailable(#[to_schema] IngestError),
}

/// Three readings at `at`: a vehicle, its meter and their assignment.
fn example_readings(at: DateTime<Utc>) -> [Value; 3] {
    let timestamp = shared::wire::format_timestamp(at);
    [
        json!({"type": "VEHICLE", "vehicleId": "EV-03", "soc": 80, "kwhDeliveredDc": 1.25,
               "batteryTemp": 25.5, "timestamp": timestamp}),
        json!({"type": "METER", "meterId": "MTR-03", "kwhConsumedAc": 1.4, "voltage": 231.5,
               "timestamp": timestamp}),
        json!({"type": "ASSIGNMENT", "vehicleId": "EV-03", "meterId": "MTR-03",
               "timestamp": timestamp}),
    ]
}

/// The API key the ingest route needs, as the description states it.
pub const API_KEY_DESCRIPTION: &str = "An API key with the ingest role (API_KEYS on the server), unless the server runs with AUTH_DISABLED=true";

/// `description` with request examples made now (the shell calls it per request).
pub fn with_fresh_examples(description: &Description) -> Description {
    with_examples(description.clone(), Utc::now())
}

/// `description` with request examples timestamped a minute before `now`.
pub fn with_examples(mut description: Description, now: DateTime<Utc>) -> Description {
    let readings = example_readings((now - TimeDelta::minutes(1)).trunc_subsecs(0));
    let ndjson: String = readings.iter().map(|r| format!("{r}\n")).collect();
    let example = |summary: &str, value: Value| {
        ExampleBuilder::new()
            .summary(summary)
            .value(Some(value))
            .build()
            .into()
    };
    let body = description
        .paths
        .paths
        .get_mut("/v1/ingest")
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut())
        .expect("POST /v1/ingest is described with a request body");
    if let Some(json) = body.content.get_mut("application/json") {
        json.examples = [
            (
                "one".to_owned(),
                example("One reading", readings[0].clone()),
            ),
            (
                "array".to_owned(),
                example("An array of readings", Value::from(readings.to_vec())),
            ),
        ]
        .into_iter()
        .collect();
    }
    if let Some(lines) = body.content.get_mut("application/x-ndjson") {
        lines.examples = [(
            "lines".to_owned(),
            example("One reading per line", Value::from(ndjson)),
        )]
        .into_iter()
        .collect();
    }
    description
}
