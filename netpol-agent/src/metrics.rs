//! Prometheus metrics, encoded by the `prometheus-client` library.
//!
//! What happens over time (compiles, syncs and their latency, rejections) is counted as it
//! happens in [`Metrics`], which the agent owns; what is state (endpoints, policies,
//! identities, map entries, the datapath's per-reason counters, the events read from the
//! ring) is read at scrape time into a [`Snapshot`]. [`render`] encodes both.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use netpol_api::flows::Verdict;
use netpol_common::counter;

use crate::{datapath::Counters, monitor::EventCounts};

/// Counted as it happens.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub compiles: Counter,
    pub sync_errors: Counter,
    pub policies_rejected: Counter,
    /// Compile plus sync, per reconcile that enforced the model.
    pub sync_seconds: Histogram,
    /// This node's pod-address announcements written, by outcome.
    announcements: Family<OutcomeLabel, Counter>,
    /// Queries the DNS proxy handled, by outcome.
    dns_queries: Family<OutcomeLabel, Counter>,
}

/// What became of one pod-address announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announced {
    Published,
    Withdrawn,
    Failed,
}

impl Metrics {
    pub fn announced(&self, what: Announced) {
        let outcome = match what {
            Announced::Published => "published",
            Announced::Withdrawn => "withdrawn",
            Announced::Failed => "failed",
        };
        self.announcements.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A query the DNS proxy handled: `outcome` answered, refused, malformed or failed.
    pub fn dns_query(&self, outcome: &'static str) {
        self.dns_queries.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            compiles: Counter::default(),
            sync_errors: Counter::default(),
            policies_rejected: Counter::default(),
            // 100 µs … ~3 s.
            sync_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            announcements: Family::default(),
            dns_queries: Family::default(),
        }
    }
}

/// State, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub endpoints: usize,
    pub held_closed: usize,
    pub policies_accepted: usize,
    pub policies_invalid: usize,
    pub policies_over_budget: usize,
    pub identities: usize,
    pub cidr_identities: usize,
    pub ipcache_entries: usize,
    pub policy_entries: usize,
    pub last_compile_seconds: f64,
    /// Service frontends (ClusterIP × port × protocol) in the SERVICES map.
    pub service_frontends: usize,
    /// Frontends with fewer backends in the map than ready (per-frontend limit or map
    /// capacity).
    pub service_frontends_limited: usize,
    /// None when the datapath's counters could not be read.
    pub datapath: Option<Counters>,
    pub events: EventCounts,
    /// Endpoint id → "namespace/pod".
    pub pods: BTreeMap<u32, String>,
    /// Pods known at an address only from their node's announcement (not posted yet).
    pub pods_announced_only: usize,
    /// Rule id → its policy (`Kind ns/name`).
    pub policies_of_rules: BTreeMap<u32, String>,
    /// Each map the agent fills: (name, entries, capacity).
    pub maps: Vec<(&'static str, usize, u32)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    direction: &'static str,
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabel {
    pod: String,
}

fn gauge(v: usize) -> Gauge {
    let g = Gauge::default();
    g.set(v as i64);
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// The exposition (OpenMetrics text).
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let mut r = Registry::default();
    r.register("netpol_endpoints", "Endpoints enforced on this node", gauge(s.endpoints));
    r.register(
        "netpol_endpoints_held_closed",
        "Endpoints held closed (host only) until their pod's labels are known",
        gauge(s.held_closed),
    );
    let policies = Family::<StateLabel, Gauge>::default();
    for (state, n) in [
        ("accepted", s.policies_accepted),
        ("rejected", s.policies_invalid),
        ("over_budget", s.policies_over_budget),
    ] {
        policies.get_or_create(&StateLabel { state }).set(n as i64);
    }
    r.register("netpol_policies", "NetworkPolicies known, by state", policies);
    r.register(
        "netpol_policies_rejected",
        "Policy versions rejected (invalid or over budget)",
        m.policies_rejected.clone(),
    );
    r.register("netpol_identities", "Label identities in use", gauge(s.identities));
    r.register("netpol_cidr_identities", "CIDR identities in use", gauge(s.cidr_identities));
    r.register("netpol_ipcache_entries", "ipcache entries (exact and prefix)", gauge(s.ipcache_entries));
    r.register(
        "netpol_policy_map_entries",
        "Policy map keys (exact and range blocks)",
        gauge(s.policy_entries),
    );
    r.register("netpol_service_frontends", "Service frontends in the datapath", gauge(s.service_frontends));
    r.register(
        "netpol_service_frontends_limited",
        "Service frontends holding fewer backends than are ready (map limits)",
        gauge(s.service_frontends_limited),
    );
    r.register(
        "netpol_pod_announcements",
        "This node's pod-address announcements written to the API server, by outcome",
        m.announcements.clone(),
    );
    r.register("netpol_dns_queries", "Queries the DNS proxy handled, by outcome", m.dns_queries.clone());
    r.register(
        "netpol_pods_announced_only",
        "Pods known at an address only from their node's announcement (not posted yet)",
        gauge(s.pods_announced_only),
    );
    r.register("netpol_compiles", "Compilations of the model", m.compiles.clone());
    let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    last.set(s.last_compile_seconds);
    r.register("netpol_compile_duration_seconds", "Duration of the last compilation", last);
    r.register("netpol_sync_duration_seconds", "Compile and sync of the model", m.sync_seconds.clone());
    r.register(
        "netpol_sync_errors",
        "Syncs that failed (each is retried with backoff)",
        m.sync_errors.clone(),
    );
    if let Some(c) = &s.datapath {
        let by_reason = Family::<ReasonLabel, Counter>::default();
        for (i, reason) in netpol_common::reason::NAMES.iter().enumerate() {
            by_reason.get_or_create(&ReasonLabel { reason }).inc_by(c.reason(i as u8));
        }
        r.register("netpol_datapath_packets", "Packets judged by the datapath, by verdict reason", by_reason);
        r.register(
            "netpol_datapath_events_lost",
            "Verdict events the ring could not take",
            counter(c.events_lost()),
        );
        r.register(
            "netpol_datapath_events_rate_limited",
            "Drop events not written: their endpoint was over its drop-event rate",
            counter(c.events_rate_limited()),
        );
        r.register(
            "netpol_datapath_ct_insert_failed",
            "Flows allowed without a conntrack entry",
            counter(c.ct_insert_failed()),
        );
        let sockets = Family::<OutcomeLabel, Counter>::default();
        for (outcome, slot) in [
            ("translated", counter::SOCK_TRANSLATED),
            ("no_backend", counter::SOCK_NO_BACKEND),
            ("rev_nat_failed", counter::SOCK_REV_NAT_FAILED),
        ] {
            sockets.get_or_create(&OutcomeLabel { outcome }).inc_by(c.0[slot as usize]);
        }
        r.register("netpol_socket_lb", "Socket-level Service translations, by outcome", sockets);
        r.register(
            "netpol_service_untranslated",
            "Packets to a ClusterIP from pods not egress-isolated (they bypassed the socket hooks)",
            counter(c.0[counter::SERVICE_UNTRANSLATED as usize]),
        );
    }
    r.register("netpol_events_received", "Verdict events read from the ring", counter(s.events.received));
    let drops = Family::<PodLabel, Counter>::default();
    for (id, n) in &s.events.drops_by_endpoint {
        let pod = s.pods.get(id).cloned().unwrap_or_else(|| format!("endpoint-{id}"));
        drops.get_or_create(&PodLabel { pod }).inc_by(*n);
    }
    r.register("netpol_drop_events", "Drop events read from the ring, by pod", drops);
    render_verdicts(&mut r, s);
    render_maps(&mut r, s);
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String");
    out
}

/// Verdict events by direction and reason; new flows allowed per policy.
fn render_verdicts(r: &mut Registry, s: &Snapshot) {
    let verdicts = Family::<VerdictLabel, Counter>::default();
    for ((direction, verdict, reason), n) in &s.events.by_direction {
        let direction = match direction {
            crate::datapath::Direction::Ingress => "ingress",
            crate::datapath::Direction::Egress => "egress",
        };
        let verdict = match verdict {
            Verdict::Allowed => "allowed",
            Verdict::Dropped => "dropped",
            Verdict::Audit => "audit",
        };
        verdicts.get_or_create(&VerdictLabel { direction, verdict, reason }).inc_by(*n);
    }
    r.register(
        "netpol_verdict_events",
        "Verdict events (rate-limited for drops and audits), by direction, verdict and reason",
        verdicts,
    );
    let hits = Family::<PolicyLabel, Counter>::default();
    for (rule, n) in &s.events.allows_by_rule {
        let policy = s.policies_of_rules.get(rule).cloned().unwrap_or_else(|| "withdrawn".into());
        hits.get_or_create(&PolicyLabel { policy }).inc_by(*n);
    }
    r.register("netpol_policy_hits", "New flows a policy's rules allowed (allow events), by policy", hits);
}

/// How full each map the agent writes is.
fn render_maps(r: &mut Registry, s: &Snapshot) {
    let (entries, capacity) = (Family::<MapLabel, Gauge>::default(), Family::<MapLabel, Gauge>::default());
    for (map, n, cap) in &s.maps {
        entries.get_or_create(&MapLabel { map }).set(*n as i64);
        capacity.get_or_create(&MapLabel { map }).set(i64::from(*cap));
    }
    r.register("netpol_map_entries", "Entries the agent wrote, by map", entries);
    r.register("netpol_map_capacity", "Entries each map holds at most", capacity);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family() {
        let m = Metrics::default();
        m.compiles.inc();
        m.sync_seconds.observe(0.002);
        m.announced(Announced::Published);
        m.dns_query("refused");
        let mut counters = Counters(vec![0; counter::COUNT as usize]);
        counters.0[counter::SOCK_TRANSLATED as usize] = 5;
        let mut s = Snapshot {
            endpoints: 3,
            policies_accepted: 2,
            service_frontends: 4,
            datapath: Some(counters),
            ..Default::default()
        };
        s.events.drops_by_endpoint.insert(7, 4);
        s.events
            .by_direction
            .insert((crate::datapath::Direction::Ingress, Verdict::Dropped, "drop-policy"), 3);
        s.events.allows_by_rule.insert(9, 2);
        s.policies_of_rules.insert(9, "NetworkPolicy default/web".into());
        s.maps.push(("POLICY", 12, 262_144));
        s.pods.insert(7, "default/b".into());
        let text = render(&m, &s);
        for want in [
            "netpol_endpoints 3",
            "netpol_policies{state=\"accepted\"} 2",
            "netpol_compiles_total 1",
            "netpol_sync_duration_seconds_count 1",
            "netpol_drop_events_total{pod=\"default/b\"} 4",
            "netpol_service_frontends 4",
            "netpol_pod_announcements_total{outcome=\"published\"} 1",
            "netpol_pods_announced_only 0",
            "netpol_dns_queries_total{outcome=\"refused\"} 1",
            "netpol_socket_lb_total{outcome=\"translated\"} 5",
            "netpol_verdict_events_total{direction=\"ingress\",verdict=\"dropped\",reason=\"drop-policy\"} 3",
            "netpol_policy_hits_total{policy=\"NetworkPolicy default/web\"} 2",
            "netpol_map_entries{map=\"POLICY\"} 12",
            "netpol_map_capacity{map=\"POLICY\"} 262144",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
