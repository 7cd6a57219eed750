//! Verdicts with names: the JSON `GET /v1/flows` serves and `netpol monitor` prints.

use std::{fmt, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

pub const PATH_FLOWS: &str = "/v1/flows";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Allowed,
    Dropped,
    /// Would have been dropped; passed because the pod's policies are audited, not enforced.
    Audit,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allowed => "ALLOWED",
            Verdict::Dropped => "DROPPED",
            Verdict::Audit => "AUDIT",
        })
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowPeer {
    pub ip: Ipv4Addr,
    /// None for protocols without ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `ns/pod` when a pod has the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// When no pod has it: the names DNS answers gave it (`toFQDNs`), or what else it is
    /// (`node NAME`, `ClusterIP`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// `ns/pod:port`, `name (ip):port` or `ip:port`.
impl fmt::Display for FlowPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pod, self.names.first()) {
            (Some(pod), _) => write!(f, "{pod}")?,
            (None, Some(name)) => write!(f, "{name} ({})", self.ip)?,
            (None, None) => write!(f, "{}", self.ip)?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// One verdict of the datapath or the DNS proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Wall-clock milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub verdict: Verdict,
    /// `ingress` or `egress`, seen from `pod`.
    pub direction: String,
    /// The local pod the verdict was for (`ns/pod`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    pub protocol: String,
    /// The destination port (None for protocols without ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// For an allow by a rule: the policy (`Kind ns/name`) and the rule in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The reason's name (`drop-policy`, ...).
    pub code: String,
    /// The name a DNS query asked (the DNS proxy's verdicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl Flow {
    /// Whether `ns/pod` is either end (or the pod the verdict was for).
    pub fn involves_pod(&self, pod: &str) -> bool {
        [&self.pod, &self.source.pod, &self.destination.pod].iter().any(|p| p.as_deref() == Some(pod))
    }

    /// Whether a pod of `ns` is either end.
    pub fn involves_namespace(&self, ns: &str) -> bool {
        let of =
            |p: &Option<String>| p.as_deref().and_then(|p| p.split_once('/')).is_some_and(|(n, _)| n == ns);
        of(&self.pod) || of(&self.source.pod) || of(&self.destination.pod)
    }
}

/// Wall-clock milliseconds since the Unix epoch (what [`Flow::time_ms`] counts).
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `HH:MM:SS.mmm` (UTC) of milliseconds since the Unix epoch.
pub fn clock(time_ms: u64) -> String {
    let day_ms = time_ms % 86_400_000;
    let (h, m, s, ms) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

/// `12:00:01.250 DROPPED a/x:41234 -> b/y:80 TCP ingress: <reason> (drop-policy)`
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} -> {} {} {}: {}",
            clock(self.time_ms),
            self.verdict,
            self.source,
            self.destination,
            self.protocol,
            self.direction,
            self.reason
        )?;
        write!(f, " ({})", self.code)
    }
}

pub const PATH_TRACE: &str = "/v1/trace";

/// `GET /v1/trace?from=..&to=..&port=..&protocol=..[&name=..]`: would this connection pass?
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceQuery {
    /// `ns/pod` (or `pod`, in default) or an IPv4 address.
    pub from: String,
    pub to: String,
    pub port: u16,
    /// TCP, UDP, SCTP or ICMP.
    pub protocol: String,
    /// For DNS a rule filters by name: the name asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl TraceQuery {
    /// The request's path, each value percent-encoded.
    pub fn path(&self) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let (from, to, proto) = (enc(&self.from), enc(&self.to), enc(&self.protocol));
        let mut s = format!("{PATH_TRACE}?from={from}&to={to}&port={}&protocol={proto}", self.port);
        if let Some(n) = &self.name {
            s += &format!("&name={}", enc(n));
        }
        s
    }
}

/// What one side's policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SideVerdict {
    /// A rule allows it.
    Allowed,
    /// No policy isolates the pod in this direction.
    NotIsolated,
    /// DNS that rules filter by name: passes for the names they allow.
    DnsFiltered,
    Denied,
    /// Denied by the policies, passed: the pod's policies are audited, not enforced.
    Audited,
    /// The pod is on another node, whose agent decides.
    Elsewhere,
    /// Not a pod: no policy of this side applies.
    NotAPod,
}

impl SideVerdict {
    /// Whether this side lets the connection through (None: another node decides).
    pub fn passes(self) -> Option<bool> {
        match self {
            SideVerdict::Allowed | SideVerdict::NotIsolated | SideVerdict::NotAPod | SideVerdict::Audited => {
                Some(true)
            }
            SideVerdict::Denied | SideVerdict::DnsFiltered => Some(false),
            SideVerdict::Elsewhere => None,
        }
    }
}

/// One side of a traced connection: the sender's egress or the receiver's ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSide {
    /// `egress` or `ingress`.
    pub direction: String,
    /// `ns/pod`, or the address.
    pub who: String,
    pub verdict: SideVerdict,
    /// The deciding policy and rule, for an allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The policies isolating the pod in this direction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// The names DNS rules allow (for `dns-filtered`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// In words.
    pub explanation: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    pub from: FlowPeer,
    pub to: FlowPeer,
    pub protocol: String,
    /// Whether it would pass (None: a side is decided on another node).
    pub allowed: Option<bool>,
    pub sides: Vec<TraceSide>,
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.allowed {
            Some(true) => "ALLOWED",
            Some(false) => "DENIED",
            None => "UNDECIDED HERE",
        };
        writeln!(f, "{} -> {} {}: {verdict}", self.from, self.to, self.protocol)?;
        for s in &self.sides {
            writeln!(f, "  {:<7} {}: {}", s.direction, s.who, s.explanation)?;
        }
        Ok(())
    }
}

pub const PATH_EXPLAIN: &str = "/v1/explain";

/// `GET /v1/explain?pod=NS/POD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainQuery {
    pub pod: String,
}

impl ExplainQuery {
    /// The request's path, the pod percent-encoded.
    pub fn path(&self) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        format!("{PATH_EXPLAIN}?pod={}", utf8_percent_encode(&self.pod, NON_ALPHANUMERIC))
    }
}

/// Which policies select a pod, and what they allow it, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub pod: String,
    pub ip: Ipv4Addr,
    /// Its policies are audited, not enforced: what they would drop passes, reported AUDIT.
    #[serde(default)]
    pub audit: bool,
    pub directions: Vec<Explained>,
}

/// One direction of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explained {
    /// `ingress` or `egress`.
    pub direction: String,
    /// The policies isolating the pod this way (none: everything is allowed).
    pub isolated_by: Vec<String>,
    /// Isolating policies that do not fit the node's budgets: they allow nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub over_budget: Vec<String>,
    /// Every rule of the isolating policies that applies to the pod: what it allows.
    pub allows: Vec<AllowedBy>,
}

/// One rule's allow, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedBy {
    /// `NetworkPolicy ns/name ingress[0]`.
    pub rule: String,
    /// `pods matching app=frontend in default`, `anywhere`, `203.0.113.0/24 except ...`
    pub peers: Vec<String>,
    /// What the peers select now: pods, and the addresses DNS answers gave their names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub now: Vec<String>,
    /// `8080/TCP`, `every port`
    pub ports: Vec<String>,
    /// DNS rules: the names queries may ask.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.pod, self.ip)?;
        if self.audit {
            writeln!(f, "  audit mode: what these policies would drop passes, reported AUDIT")?;
        }
        for d in &self.directions {
            if d.isolated_by.is_empty() {
                writeln!(f, "  {}: not isolated (every peer, every port)", d.direction)?;
                continue;
            }
            writeln!(f, "  {}: isolated by {}", d.direction, d.isolated_by.join(", "))?;
            for p in &d.over_budget {
                writeln!(f, "    {p}: over the node's budget, allows nothing")?;
            }
            if d.allows.is_empty() {
                writeln!(f, "    nothing is allowed")?;
            }
            let toward = if d.direction == "ingress" { "from" } else { "to" };
            for a in &d.allows {
                write!(f, "    {}: {toward} {} on {}", a.rule, a.peers.join(" or "), a.ports.join(", "))?;
                if !a.now.is_empty() {
                    write!(f, " (now: {})", a.now.join(", "))?;
                }
                if !a.dns_names.is_empty() {
                    write!(f, "; DNS queries only for {}", a.dns_names.join(", "))?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_print_one_line_with_names() {
        let flow = Flow {
            time_ms: 86_400_000 * 3 + 3_723_250,
            verdict: Verdict::Dropped,
            direction: "ingress".into(),
            pod: Some("b/y".into()),
            source: FlowPeer {
                ip: Ipv4Addr::new(10, 0, 0, 1),
                port: Some(41234),
                pod: Some("a/x".into()),
                names: vec![],
            },
            destination: FlowPeer {
                ip: Ipv4Addr::new(10, 0, 0, 2),
                port: Some(80),
                pod: Some("b/y".into()),
                names: vec![],
            },
            protocol: "TCP".into(),
            port: Some(80),
            policy: None,
            rule: None,
            reason: "no policy selecting b/y allows ingress from a/x on 80/TCP".into(),
            code: "drop-policy".into(),
            query: None,
        };
        assert_eq!(
            flow.to_string(),
            "01:02:03.250 DROPPED a/x:41234 -> b/y:80 TCP ingress: no policy selecting b/y allows ingress \
             from a/x on 80/TCP (drop-policy)"
        );
        assert!(flow.involves_pod("a/x") && flow.involves_namespace("b") && !flow.involves_namespace("c"));
        let json: serde_json::Value = serde_json::to_value(&flow).unwrap();
        assert_eq!(json["verdict"], "DROPPED");
        assert_eq!(json["source"]["pod"], "a/x");
        let world = FlowPeer {
            ip: Ipv4Addr::new(198, 51, 100, 10),
            port: Some(443),
            pod: None,
            names: vec!["songlaa.com".into()],
        };
        assert_eq!(world.to_string(), "songlaa.com (198.51.100.10):443");
    }
}

pub const PATH_DEBUG: &str = "/v1/debug";

/// `GET /v1/debug?pod=NS/POD`: the pod's packets' decision steps, live (ndjson), for as
/// long as the request is open; the pod's endpoint logs them only meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugQuery {
    pub pod: String,
}

impl DebugQuery {
    /// The request's path, the pod percent-encoded.
    pub fn path(&self) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        format!("{PATH_DEBUG}?pod={}", utf8_percent_encode(&self.pod, NON_ALPHANUMERIC))
    }
}

/// One decision step the datapath took for a debugged pod's packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DebugStep {
    /// When the agent read it (wall clock, ms since the epoch).
    pub time_ms: u64,
    /// `ns/pod`.
    pub pod: String,
    /// `ingress` (to the pod) or `egress` (from it).
    pub direction: String,
    /// `parse`, `conntrack`, `ipcache`, `policy`, `verdict`.
    pub step: String,
    /// What the step found, in words.
    pub words: String,
}

impl fmt::Display for DebugStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (time, pod, dir) = (clock(self.time_ms), &self.pod, &self.direction);
        write!(f, "{time} {pod} {dir:<7} {:<9} {}", self.step, self.words)
    }
}
