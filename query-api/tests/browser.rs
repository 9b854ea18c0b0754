//! The dashboard page at `/` in headless Chromium, against real data: the
//! fleet ranked with health statuses and the chosen vehicle's chart and
//! figures, equal to what the API answers; and the page's API key handling
//! against a service that requires keys.

use chrono::{DateTime, TimeDelta, Utc};
use scraper::{ElementRef, Html, Selector};
use serde_json::Value;
use test_support::browser::rendered_dom;
use test_support::postgres::{fresh_database, TestDatabase};
use test_support::readings::{decode, meter, vehicle};

mod common;
use common::{args_with, Api};

/// Four vehicles, each charging through the meter with its own id (the
/// implicit pairing), from 8 h to 2 h ago: about 95 %, 80 % and 60 %
/// efficient, and one that never drew AC.
async fn seed(db: &TestDatabase) {
    let start = Utc::now() - TimeDelta::hours(8);
    let mut values = Vec::new();
    for step in 0..72 {
        let at: DateTime<Utc> = start + TimeDelta::minutes(5 * step);
        let ac = 0.4 + f64::from((step % 5) as i32) / 20.0;
        for (id, efficiency) in [("F-95", 0.95), ("F-80", 0.80), ("F-60", 0.60)] {
            values.push(vehicle(id, at, 50.0, ac * efficiency, 24.0));
            values.push(meter(id, at, ac, 230.0));
        }
        values.push(vehicle("F-NOAC", at, 50.0, 0.3, 24.0));
    }
    let readings: Vec<_> = values.iter().map(decode).collect();
    ingest_worker::store::write_batch(&db.pool, &readings)
        .await
        .unwrap();
}

fn select<'a>(dom: &'a Html, css: &str) -> Vec<ElementRef<'a>> {
    dom.select(&Selector::parse(css).unwrap()).collect()
}

fn text(element: ElementRef<'_>) -> String {
    element.text().collect::<String>().trim().to_owned()
}

fn text_of(dom: &Html, css: &str) -> String {
    let found = select(dom, css);
    assert_eq!(found.len(), 1, "one {css}");
    text(found[0])
}

fn body_state(dom: &Html) -> String {
    select(dom, "body")[0]
        .attr("data-state")
        .unwrap_or_default()
        .to_owned()
}

/// A number the page shows (e.g. "80.00 %"), equal to the API's within its rounding.
fn assert_shows(shown: &str, value: &Value, decimals: i32, what: &str) {
    match value.as_f64() {
        None => assert_eq!(shown, "—", "{what}"),
        Some(expected) => {
            let number: f64 = shown
                .trim_end_matches(" %")
                .parse()
                .unwrap_or_else(|_| panic!("{what}: {shown:?}"));
            assert!(
                (number - expected).abs() <= 0.5 * 10f64.powi(-decimals) + 1e-9,
                "{what}: page shows {shown}, the API says {expected}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_ranks_the_fleet_and_charts_the_chosen_vehicle() {
    let db = fresh_database().await;
    seed(&db).await;
    let api = Api::start(&db).await;
    let (_, fleet) = api.get("/v1/analytics/fleet?limit=1000").await;
    let (_, performance) = api.get("/v1/analytics/performance/F-80").await;
    let (_, series) = api
        .get("/v1/analytics/performance/F-80/series?bucket=1h")
        .await;

    let dom = Html::parse_document(&rendered_dom(&format!("{}/?vehicle=F-80", api.url)).await);
    assert_eq!(body_state(&dom), "ready", "{}", text_of(&dom, "#error"));
    assert_eq!(text_of(&dom, "#error"), "");

    // The ranking, worst first, with the statuses the thresholds give.
    let rows = select(&dom, "#fleet tr.vehicle");
    let shown: Vec<(&str, &str)> = rows
        .iter()
        .map(|row| {
            (
                row.attr("data-vehicle-id").unwrap(),
                row.attr("data-status").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("F-60", "CRITICAL"),
            ("F-80", "WARNING"),
            ("F-95", "HEALTHY"),
            ("F-NOAC", "UNKNOWN")
        ]
    );
    assert_eq!(text_of(&dom, "#fleet-total"), "4");
    for (row, expected) in rows.iter().zip(fleet["vehicles"].as_array().unwrap()) {
        let cell = |class: &str| {
            text(
                row.select(&Selector::parse(&format!("td.{class}")).unwrap())
                    .next()
                    .unwrap(),
            )
        };
        let id = expected["vehicleId"].as_str().unwrap();
        assert_eq!(cell("vehicle-id"), id);
        assert_eq!(cell("status"), expected["status"].as_str().unwrap());
        assert_shows(
            &cell("efficiency"),
            &expected["efficiency"],
            2,
            &format!("{id} efficiency"),
        );
        assert_shows(
            &cell("sum-dc"),
            &expected["sumDC"],
            3,
            &format!("{id} sumDC"),
        );
        assert_shows(
            &cell("sum-ac"),
            &expected["sumAC"],
            3,
            &format!("{id} sumAC"),
        );
    }
    let selected = select(&dom, "#fleet tr.vehicle.selected");
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0].attr("data-vehicle-id"), Some("F-80"));

    // The chosen vehicle: its figures and a chart of every hourly point.
    assert_eq!(text_of(&dom, "#vehicle-title"), "F-80");
    assert_shows(
        &text_of(&dom, "#summary-efficiency"),
        &performance["efficiency"],
        2,
        "efficiency",
    );
    assert_shows(
        &text_of(&dom, "#summary-sum-dc"),
        &performance["sumDC"],
        3,
        "sumDC",
    );
    assert_shows(
        &text_of(&dom, "#summary-sum-ac"),
        &performance["sumAC"],
        3,
        "sumAC",
    );
    assert_eq!(text_of(&dom, "#summary-meters"), "F-80");
    let points = series["points"].as_array().unwrap();
    assert!(points.len() >= 24, "{} points", points.len());
    let with_efficiency = points.iter().filter(|p| !p["efficiency"].is_null()).count();
    // Six hours of charging, not aligned to the hour: six or seven buckets.
    assert!(
        (6..=7).contains(&with_efficiency),
        "{with_efficiency} buckets"
    );
    for (name, drawn) in [
        ("dc", points.len()),
        ("ac", points.len()),
        ("efficiency", with_efficiency),
    ] {
        let line = select(&dom, &format!("#chart polyline[data-series={name}]"));
        assert_eq!(line.len(), 1, "{name} line");
        assert_eq!(
            line[0].attr("data-points"),
            Some(points.len().to_string().as_str()),
            "{name}"
        );
        let pairs = line[0].attr("points").unwrap().split_whitespace().count();
        assert_eq!(pairs, drawn, "{name} line vertices");
    }
    assert_eq!(select(&dom, "#chart line.threshold").len(), 1);
    let table_rows = select(&dom, "#series-table tbody tr");
    assert_eq!(table_rows.len(), points.len());
    for (row, point) in table_rows.iter().zip(points) {
        let cells: Vec<String> = row
            .select(&Selector::parse("td").unwrap())
            .map(text)
            .collect();
        assert_shows(&cells[1], &point["sumDC"], 3, "series sumDC");
        assert_shows(&cells[2], &point["sumAC"], 3, "series sumAC");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_asks_for_a_key_with_the_read_role() {
    const READ_KEY: &str = "dashboard-read-0123456789";
    const INGEST_KEY: &str = "dashboard-ingest-012345678";
    let db = fresh_database().await;
    seed(&db).await;
    let keys = format!("--api-keys=read:{READ_KEY},ingest:{INGEST_KEY}");
    let api = Api::start_with(args_with(&db, &[&keys])).await;

    // The page itself needs no key; its API calls do.
    let dom = Html::parse_document(&rendered_dom(&api.url).await);
    assert_eq!(body_state(&dom), "error");
    assert_eq!(text_of(&dom, "#error"), "API key required or not accepted");
    assert!(select(&dom, "#fleet tr.vehicle").is_empty());

    let dom = Html::parse_document(&rendered_dom(&format!("{}/#key={INGEST_KEY}", api.url)).await);
    assert_eq!(text_of(&dom, "#error"), "This API key lacks the read role");

    let dom = Html::parse_document(&rendered_dom(&format!("{}/#key={READ_KEY}", api.url)).await);
    assert_eq!(body_state(&dom), "ready", "{}", text_of(&dom, "#error"));
    assert_eq!(select(&dom, "#fleet tr.vehicle").len(), 4);
    // The worst vehicle is chosen when the address names none.
    assert_eq!(text_of(&dom, "#vehicle-title"), "F-60");
}
