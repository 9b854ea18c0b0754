//! Reading a service's OpenAPI description in tests: its operations, the
//! URL its parameter examples make, and whether a JSON value matches one of
//! its schemas (JSON Schema 2020-12, which OpenAPI 3.1 uses).

use serde_json::{json, Value};

/// One described operation.
pub struct Operation<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub spec: &'a Value,
}

/// Every operation of `description`, in its order.
pub fn operations(description: &Value) -> Vec<Operation<'_>> {
    let mut found = Vec::new();
    for (path, item) in description["paths"].as_object().expect("paths") {
        for (method, spec) in item.as_object().expect("path item") {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                found.push(Operation {
                    method: method.as_str(),
                    path: path.as_str(),
                    spec,
                });
            }
        }
    }
    found
}

/// A path parameter example as it goes in a URL: examples are kept to
/// characters that need no encoding.
fn path_segment(raw: &str) -> &str {
    assert!(
        !raw.is_empty()
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)),
        "path example {raw:?} would need percent-encoding"
    );
    raw
}

/// The path and query an operation's parameter examples make: every path
/// parameter and each query parameter that has an example. Panics when a
/// required parameter has no example (the description should give one).
pub fn example_target(operation: &Operation<'_>) -> String {
    let mut path = operation.path.to_owned();
    let mut query = Vec::new();
    for parameter in operation.spec["parameters"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = parameter["name"].as_str().expect("parameter name");
        let example = match &parameter["example"] {
            Value::Null => {
                assert!(
                    parameter["required"] != json!(true),
                    "{} {}: required parameter {name} has no example",
                    operation.method,
                    operation.path
                );
                continue;
            }
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        match parameter["in"].as_str() {
            Some("path") => path = path.replace(&format!("{{{name}}}"), path_segment(&example)),
            Some("query") => query.push((name.to_owned(), example)),
            other => panic!("{name}: parameter in {other:?}"),
        }
    }
    if query.is_empty() {
        path
    } else {
        let pairs: String = reqwest::Url::parse_with_params("http://x/", &query)
            .unwrap()
            .query()
            .unwrap()
            .to_owned();
        format!("{path}?{pairs}")
    }
}

/// The schema of `operation`'s answer with `status` as JSON, if described.
pub fn response_schema<'a>(operation: &Operation<'a>, status: u16) -> Option<&'a Value> {
    let schema =
        &operation.spec["responses"][status.to_string()]["content"]["application/json"]["schema"];
    (!schema.is_null()).then_some(schema)
}

/// Every way `value` breaks `schema` (which may `$ref` the description's
/// components); empty when it matches.
pub fn violations(description: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut root = schema.clone();
    if let Value::Object(object) = &mut root {
        object.insert("components".to_owned(), description["components"].clone());
    }
    let validator = jsonschema::draft202012::new(&root)
        .unwrap_or_else(|error| panic!("the described schema {schema} is not valid: {error}"));
    validator
        .iter_errors(value)
        .map(|error| format!("{} at {}", error, error.instance_path))
        .collect()
}

/// Panics, listing every violation, unless `value` matches `schema`.
pub fn assert_matches(description: &Value, schema: &Value, value: &Value, what: &str) {
    let errors = violations(description, schema, value);
    assert!(
        errors.is_empty(),
        "{what}: {value} does not match its schema: {errors:#?}"
    );
}
