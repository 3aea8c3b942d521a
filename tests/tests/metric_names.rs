//! The chart's alerts and dashboard query only metrics the binaries expose: every
//! `coupon_…` name in the PrometheusRule and in the Grafana dashboard is one the api, the
//! consumer or the operator registers (with the suffix Prometheus gives its type). A renamed
//! metric fails here instead of leaving an alert that never fires or an empty panel.

use std::collections::BTreeSet;

use coupon_tests::local_cluster::workspace_root;

/// Every series name the registries can produce: `# TYPE` lines, with each type's suffixes.
fn exposed() -> BTreeSet<String> {
    let text = coupon_service::metrics::Metrics::shared().encode() + &coupon_operator::metrics::Metrics::default().encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
    }
    names
}

/// The `coupon_…` metric names in `text`.
fn queried(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("coupon_") {
        let start = at + found;
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            text[start..].find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).map_or(text.len(), |n| start + n);
        if !preceded {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

#[test]
fn alerts_and_dashboard_query_only_exposed_metrics() {
    let exposed = exposed();
    let chart = workspace_root().join("charts/coupon-system");
    let rules = std::fs::read_to_string(chart.join("templates/optional.yaml")).unwrap();
    let rules = &rules[rules.find("kind: PrometheusRule").expect("the PrometheusRule")..];
    let dashboard = std::fs::read_to_string(chart.join("files/dashboard.json")).unwrap();
    for (what, text) in [("PrometheusRule", rules), ("dashboard", dashboard.as_str())] {
        let names = queried(text);
        assert!(!names.is_empty(), "{what} queries no metric");
        let unknown: Vec<_> = names.difference(&exposed).collect();
        assert!(unknown.is_empty(), "{what} queries metrics nothing exposes: {unknown:?} (exposed: {exposed:?})");
    }
    // The per-event gauge the readiness alert reads is there even before any event.
    assert!(exposed.contains("coupon_operator_event_open_unready"), "{exposed:?}");
}
