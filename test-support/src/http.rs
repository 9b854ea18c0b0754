//! HTTP calls the tests make to the services.

use serde_json::Value;

/// What an ingest request got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The JSON body, or `Null` when there was none.
    pub body: Value,
}

/// POSTs `body` to `{base_url}/v1/ingest` with `content_type`.
pub async fn ingest(base_url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{base_url}/v1/ingest"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("gateway reachable");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}
