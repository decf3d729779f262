//! Telemetry under test: [`Metrics`], a node's `/metrics` scraped over
//! HTTP and parsed with a Prometheus text-format parser
//! (`prometheus-parse`), with exact lookups by name and labels;
//! [`readyz`], a node's readiness answer.

use std::net::SocketAddr;

use prometheus_parse::{Sample, Scrape, Value};

/// One scrape of `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    /// Every sample, as parsed.
    pub samples: Vec<Sample>,
    /// The text as served.
    pub text: String,
}

impl Metrics {
    /// Scrapes `http://{addr}/metrics` (panics naming what failed).
    pub async fn scrape(addr: SocketAddr) -> Self {
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200, "GET /metrics status");
        let text = response.text().await.expect("/metrics body");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("/metrics is Prometheus text");
        Self {
            samples: scrape.samples,
            text,
        }
    }

    /// The value of the sample `name` whose labels are exactly `labels`
    /// (a histogram's `_count` and `_sum` included); `None` if absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .and_then(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    /// [`Metrics::get`], 0 when absent (a counter never incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every (metric, label name, label value) served.
    pub fn labels(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for s in &self.samples {
            for (k, v) in s.labels.iter() {
                out.push((s.metric.clone(), k.clone(), v.clone()));
            }
        }
        out
    }
}

/// `GET http://{addr}/readyz`: (status, JSON body).
pub async fn readyz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    let text = response.text().await.expect("/readyz body");
    let body = serde_json::from_str(&text).expect("/readyz body is JSON");
    (status, body)
}
