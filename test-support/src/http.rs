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

/// The Prometheus text a service serves at `{base_url}/metrics`.
pub async fn scrape(base_url: &str) -> String {
    let response = reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("service reachable");
    assert_eq!(response.status().as_u16(), 200, "GET /metrics");
    response.text().await.expect("metrics text")
}

/// The value of the sample `name` whose labels include every one of
/// `labels`, from Prometheus text; `None` when there is no such sample.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            let metric = line.split_whitespace().next().unwrap_or_default();
            let metric_name = metric.split('{').next().unwrap_or_default();
            metric_name == name
                && labels
                    .iter()
                    .all(|(key, value)| metric.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
}

/// `id` as one URL path segment: everything but unreserved characters
/// percent-encoded, so `/`, `?`, `#` and `%` stay inside the segment.
pub fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends `request` and returns its JSON body (any status).
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("service reachable")
        .json()
        .await
        .expect("a JSON body")
}

/// Asserts the shell's answers for a wrong method on `method_path` (405)
/// and for a path no route serves (404), each with its JSON error.
pub async fn assert_fallbacks(base_url: &str, wrong_method: reqwest::Method, method_path: &str) {
    let client = reqwest::Client::new();
    for (request, status, error) in [
        (
            client.request(wrong_method, format!("{base_url}{method_path}")),
            405,
            "method not allowed",
        ),
        (
            client.get(format!("{base_url}/nowhere")),
            404,
            "no such route",
        ),
    ] {
        let response = request.send().await.expect("service reachable");
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.json::<Value>().await.expect("a JSON body"),
            serde_json::json!({ "error": error })
        );
    }
}
