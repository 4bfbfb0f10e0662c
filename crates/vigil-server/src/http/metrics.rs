//! `/metrics`, through the `prometheus-client` crate.
//!
//! The server's counters live where they are counted ([`ServerStats`],
//! plain atomics, also read by the tests and `/health`); the latency
//! histograms in `Latencies` beside them. Each scrape registers what they hold now in
//! a fresh [`Registry`] and encodes it: OpenMetrics text for a scraper that
//! asks for it (`Accept: application/openmetrics-text`, as Prometheus does
//! by default), otherwise the Prometheus text format 0.0.4, which is the
//! same families with each counter's `HELP` and `TYPE` named by its
//! `_total` sample and no `# EOF` (what `promtool check metrics` and older
//! scrapers read).
//!
//! [`ServerStats`]: crate::ServerStats

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::CONTENT_TYPE;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::State;
use super::response::Resp;

type Labels = Vec<(&'static str, String)>;

/// What one scrape registers.
struct Scrape(Registry);

impl Scrape {
    /// `prometheus-client` ends every help text with a period: one is
    /// enough.
    fn help(help: &str) -> &str {
        help.strip_suffix('.').unwrap_or(help)
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let gauge = Gauge::<i64, AtomicI64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        self.0.register(name, Self::help(help), gauge);
    }

    /// A counter whose sample is `NAME_total`.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        self.0.register(name, Self::help(help), counter);
    }

    fn family<M>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        samples: &[(impl ToString, u64)],
        set: impl Fn(&M, u64),
    ) where
        M: prometheus_client::metrics::TypedMetric
            + prometheus_client::encoding::EncodeMetric
            + Default
            + Send
            + Sync
            + std::fmt::Debug
            + 'static,
    {
        let family = Family::<Labels, M>::default();
        for (value_label, value) in samples {
            set(
                &family.get_or_create(&vec![(label, value_label.to_string())]),
                *value,
            );
        }
        self.0.register(name, Self::help(help), family);
    }

    fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        samples: &[(impl ToString, u64)],
    ) {
        self.family::<Counter>(name, help, label, samples, |c, v| {
            c.inc_by(v);
        });
    }

    fn gauges(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        samples: &[(impl ToString, u64)],
    ) {
        self.family::<Gauge>(name, help, label, samples, |g, v| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        });
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.0.register(name, Self::help(help), histogram.clone());
    }
}

/// Whether the request asks for OpenMetrics.
pub(super) fn wants_openmetrics<B>(req: &hyper::Request<B>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

pub(super) fn metrics(state: &State, openmetrics: bool) -> Resp {
    let mut scrape = Scrape(Registry::default());
    register(&mut scrape, state);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &scrape.0);
    let (body, kind) = if openmetrics {
        (
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (to_prometheus_text(&text), "text/plain; version=0.0.4")
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    resp
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family
/// `X` (samples `X_total`) is named `X_total` in its `HELP` and `TYPE`
/// lines, and `# EOF` goes. Gauges and histograms read the same in both.
fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(open.len() + 8 * counters.len());
    for line in open.lines().filter(|l| *l != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let (name, rest) = line.strip_prefix(tag)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {rest}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn register(m: &mut Scrape, state: &State) {
    let s = state.server.stats();
    let sessions = state.server.sessions();
    m.gauge(
        "vigil_connections",
        "Clients connected now.",
        sessions.len() as u64,
    );
    let skew_ms = sessions
        .iter()
        .filter_map(|c| c.clock_skew_ms)
        .map(i64::unsigned_abs)
        .max()
        .unwrap_or(0);
    let skew = Gauge::<f64, AtomicU64>::default();
    // Offsets are bounded (±10 years in ms): exact in an f64.
    skew.set(skew_ms as f64 / 1000.0);
    m.0.register(
        "vigil_clients_clock_skew_max_seconds",
        "Largest clock offset from this server that a connected client reported (absolute, seconds, to the millisecond)",
        skew,
    );
    m.gauge(
        "vigil_clients_nonce_heartbeats",
        "Connected clients whose heartbeats are fresh by nonce (vigil-heartbeat-v2).",
        sessions.iter().filter(|c| c.nonce_heartbeats).count() as u64,
    );
    m.gauge(
        "vigil_clients_websocket",
        "Connected clients whose session came over the WebSocket transport.",
        sessions
            .iter()
            .filter(|c| c.transport == crate::Transport::WebSocket)
            .count() as u64,
    );
    {
        use vigil_ws::Violation;
        let v = &s.websocket_violations;
        m.counters(
            "vigil_websocket_sessions",
            "WebSocket upgrades by result: accepted (a session), or refused for another path (404), no vigil.v1 subprotocol (400), or not an upgrade.",
            "result",
            &[
                ("accepted", s.websocket_sessions.get()),
                ("wrong_path", s.websocket_wrong_path.get()),
                ("subprotocol", s.websocket_subprotocol.get()),
                ("bad_upgrade", s.websocket_bad_upgrade.get()),
            ],
        );
        m.counters(
            "vigil_websocket_closed",
            "WebSocket sessions closed for what is not a frame: a binary message (1003), one past the size limit (1009), a newline or bad UTF-8 in a message (1007).",
            "violation",
            &[
                ("binary", v.count(Violation::Binary)),
                ("too_large", v.count(Violation::TooLarge)),
                ("bad_text", v.count(Violation::BadText)),
            ],
        );
    }
    m.counter(
        "vigil_connections_accepted",
        "TCP connections accepted.",
        s.accepted.get(),
    );
    m.counter(
        "vigil_connections_refused_at_limit",
        "Connections refused at the connection limit.",
        s.refused_at_limit.get(),
    );
    m.counters(
        "vigil_handshakes",
        "TLS handshakes by result.",
        "result",
        &[
            ("ok", s.handshakes_ok.get()),
            ("failed", s.handshakes_failed.get()),
        ],
    );
    m.counters(
        "vigil_commands",
        "Commands by outcome: sent to a session (or not queued, its queue full), then acknowledged done, failed or refused.",
        "outcome",
        &[
            ("sent", s.commands_sent.get()),
            ("queue_full", s.commands_queue_full.get()),
            ("done", s.acks_done.get()),
            ("failed", s.acks_failed.get()),
            ("refused", s.acks_refused.get()),
        ],
    );
    m.counters(
        "vigil_module_events",
        "Module registry events by kind.",
        "event",
        &[
            ("loaded", s.module_loaded.get()),
            ("reloaded", s.module_reloaded.get()),
            ("unloaded", s.module_unloaded.get()),
            ("rejected", s.module_rejected.get()),
        ],
    );
    let hosts = state.server.module_health();
    let per_module = |f: &dyn Fn(&vigil_modules::HostHealth) -> u64| -> Vec<(String, u64)> {
        hosts.iter().map(|(n, h)| (n.clone(), f(h))).collect()
    };
    m.counters(
        "vigil_module_host_crashes",
        "Times a module's host process died during a call or at its start (signal, exit, memory limit), by module.",
        "module",
        &per_module(&|h| h.crashes),
    );
    m.counters(
        "vigil_module_host_timeouts",
        "Module calls that ran past their timeout, each of which killed its host, by module.",
        "module",
        &per_module(&|h| h.timeouts),
    );
    m.counters(
        "vigil_module_host_restarts",
        "Times a module's host process was started again, by module.",
        "module",
        &per_module(&|h| h.restarts),
    );
    m.gauges(
        "vigil_module_failing",
        "1 for a module whose host failed 3 or more times within a minute.",
        "module",
        &per_module(&|h| u64::from(h.state == vigil_modules::HostState::Failing)),
    );
    m.counter(
        "vigil_failsafe_reports",
        "Failsafe transitions reported by clients.",
        s.failsafe_reports.get(),
    );
    m.counter(
        "vigil_audit_dropped",
        "Audit records dropped because the backlog was full.",
        s.audit_dropped.get(),
    );
    m.counters(
        "vigil_refusals",
        "Unauthenticated traffic refused: TLS handshakes and emergency shutdown attempts (the first from each source per window is audited one by one, the rest in refusals.summary records).",
        "kind",
        &[
            ("handshake", s.refused_handshakes.get()),
            ("emergency", s.refused_emergency.get()),
        ],
    );
    m.counter(
        "vigil_refusals_recorded",
        "Refusals written to the audit log one by one.",
        s.refusals_recorded.get(),
    );
    if let Some(a) = state.server.audit_health() {
        m.gauge(
            "vigil_audit_writable",
            "1 when the audit log records (so commands are sent), 0 when its last write failed.",
            u64::from(a.problem.is_none()),
        );
        let reasons = ["disk_full", "file_size_limit", "read_only", "io_error"];
        let failing: Vec<(String, u64)> = reasons
            .iter()
            .map(|r| {
                (
                    (*r).to_owned(),
                    u64::from(a.problem.as_ref().is_some_and(|p| p.reason == *r)),
                )
            })
            .collect();
        m.gauges(
            "vigil_audit_failing",
            "1 for the reason the audit log cannot record now.",
            "reason",
            &failing,
        );
        m.gauge(
            "vigil_audit_reserve_bytes",
            "Bytes the audit log holds in reserve for an emergency shutdown.",
            a.reserve_bytes,
        );
        if let Some(free) = a.free_bytes {
            m.gauge(
                "vigil_audit_disk_free_bytes",
                "Free bytes on the audit log's file system.",
                free,
            );
        }
        m.gauge(
            "vigil_audit_sealed_segments",
            "Sealed audit log segments kept.",
            a.sealed_segments,
        );
    }
    m.counter(
        "vigil_heartbeats",
        "Signed heartbeats sent.",
        s.heartbeats.get(),
    );
    m.counter(
        "vigil_bad_frames",
        "Frames answered with an error.",
        s.bad_frames.get(),
    );
    m.counter(
        "vigil_slow_consumers",
        "Sessions closed because the client did not read.",
        s.slow_consumers.get(),
    );
    m.counters(
        "vigil_connections_shed",
        "Connections closed to make room for new ones: TLS handshakes in progress, REST connections waiting for a request.",
        "listener",
        &[
            ("tls", s.shed.get()),
            ("rest", state.shed.load(Ordering::Relaxed)),
        ],
    );
    m.counter(
        "vigil_http_requests",
        "REST requests received.",
        state.requests.load(Ordering::Relaxed),
    );
    let latencies = state.server.latencies();
    m.histogram(
        "vigil_fanout_duration_seconds",
        "Time to resolve a delivery's targets and queue it for every one of them (a command, relayed or signed here).",
        &latencies.fanout,
    );
    m.histogram(
        "vigil_exec_duration_seconds",
        "Module calls, from the call's frame read to its answer queued (waiting for a run slot included).",
        &latencies.exec,
    );
    m.histogram(
        "vigil_send_duration_seconds",
        "POST /send requests, from the body read to the answer (with ?wait, the wait included).",
        &latencies.send,
    );
}

#[cfg(test)]
mod tests {
    use super::to_prometheus_text;

    #[test]
    fn counters_are_named_by_their_total_sample_and_eof_goes() {
        let open = "# HELP a_thing Things.\n# TYPE a_thing counter\na_thing_total{k=\"v\"} 1\n\
                    # HELP g Gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP a_thing_total Things.\n# TYPE a_thing_total counter\na_thing_total{k=\"v\"} 1\n\
             # HELP g Gauge.\n# TYPE g gauge\ng 2\n"
        );
    }
}
