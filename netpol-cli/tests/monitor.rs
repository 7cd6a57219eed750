//! `netpol monitor` on a local node (root), with real traffic: the lab's backend policies,
//! a denied probe shown within a second with its reason and both pods' names, an allowed
//! new flow naming the policy and rule that allowed it, and the filters; `netpol trace`
//! answering the same before any packet; `netpol explain` of the backend; the metrics
//! counting those verdicts.

mod common;

use std::{
    io::BufRead,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{leftovers, netpol, Node};
use netpol_tests::need_root;
use serde_json::Value;

/// A running `netpol monitor`, its JSON lines on a channel; killed on drop.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Monitor {
    fn start(root: &str, filters: &[&str]) -> Monitor {
        let mut child = Command::new(netpol())
            .args(["monitor", "--root", root, "-o", "json"])
            .args(filters)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap_or(Value::Null)).is_err() {
                    return;
                }
            }
        });
        // Following starts once the agent answered; nothing sent before is shown.
        std::thread::sleep(Duration::from_millis(500));
        Monitor { child, lines }
    }

    /// The first line `want` accepts within `t`, with everything seen before it.
    fn find(&self, t: Duration, want: impl Fn(&Value) -> bool) -> (Option<Value>, Vec<Value>) {
        let deadline = Instant::now() + t;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return (Some(v), seen),
                Ok(v) => seen.push(v),
                Err(_) => break,
            }
        }
        (None, seen)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab's app with the backend's two ingress policies: its frontend, not-frontend and
/// backend pods (`default/NAME`).
fn backend_lab(node: &Node) -> [String; 3] {
    node.ok(&["apply", "-f", "simple-app.yaml"]);
    node.ok(&["apply", "-f", "backend-ingress-deny.yaml"]);
    node.ok(&["apply", "-f", "backend-allow-ingress-frontend.yaml"]);
    ["app=frontend", "app=not-frontend", "app=backend"].map(|sel| {
        let name = node.ok(&["get", "pods", "-l", sel, "-o", "jsonpath={.items[0].metadata.name}"]);
        format!("default/{}", name.trim())
    })
}

#[test]
fn monitor_explains_drops_and_names_the_policy_of_allows() {
    if need_root() {
        return;
    }
    let root = "test-mon";
    let node = Node::up(root, "10.244.207.0/24");
    let [front, not_front, backend] = backend_lab(&node);
    let probe = |from: &str| node.run(&["probe", from, &format!("{backend}:8080"), "--timeout", "500ms"]);

    // (A pod without its namespace is in default, as kubectl takes it.)
    let all = Monitor::start(root, &["--pod", backend.trim_start_matches("default/")]);
    let dropped = Monitor::start(root, &["--verdict", "dropped", "--namespace", "default"]);
    let t = Instant::now();
    assert_eq!(probe(&not_front).status.code(), Some(1), "control: not-frontend is denied");
    let is_drop = |v: &Value| v["verdict"] == "DROPPED" && v["source"]["pod"] == not_front.as_str();
    let (shown, before) = all.find(Duration::from_secs(1), is_drop);
    let elapsed = t.elapsed();
    let dropv = shown.unwrap_or_else(|| panic!("no drop shown within 1 s; seen {before:?}"));
    assert_eq!(dropv["destination"]["pod"], backend.as_str());
    assert_eq!((dropv["direction"].as_str(), dropv["port"].as_u64()), (Some("ingress"), Some(8080)));
    assert_eq!((dropv["protocol"].as_str(), dropv["code"].as_str()), (Some("TCP"), Some("drop-policy")));
    let reason = dropv["reason"].as_str().unwrap();
    let want = format!("no policy selecting {backend} allows ingress from {not_front} on 8080/TCP");
    assert!(reason.starts_with(&want), "{reason}");
    for policy in
        ["NetworkPolicy default/backend-ingress-deny", "NetworkPolicy default/backend-allow-ingress-frontend"]
    {
        assert!(reason.contains(policy), "the isolating policies are not named: {reason}");
    }
    assert!(elapsed < Duration::from_secs(1), "shown after {elapsed:?}");

    assert_eq!(probe(&front).status.code(), Some(0), "control: frontend is allowed");
    let is_allow = |v: &Value| v["verdict"] == "ALLOWED" && v["code"] == "allow-policy";
    let (allow, before) = all.find(Duration::from_secs(1), is_allow);
    let allow = allow.unwrap_or_else(|| panic!("the allowed flow was not shown; seen {before:?}"));
    assert_eq!(allow["source"]["pod"], front.as_str());
    assert_eq!(allow["policy"], "NetworkPolicy default/backend-allow-ingress-frontend");
    assert_eq!(allow["rule"], "NetworkPolicy default/backend-allow-ingress-frontend ingress[0]");

    // `netpol trace` says the same, before any packet: which rule allows, which side denies.
    let trace = |from: &str, to: &str| {
        let out = Command::new(netpol()).args(["trace", "--root", root, from, to]).output().unwrap();
        (out.status.code(), common::text(&out))
    };
    let (code, text) = trace(&front, &format!("{backend}:8080"));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("allowed by NetworkPolicy default/backend-allow-ingress-frontend ingress[0]"),
        "{text}"
    );
    let (code, text) = trace(&not_front, &format!("{backend}:8080/TCP"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("ingress {backend}: {want}")), "{text}");
    let (code, text) = trace("default/nope", &format!("{backend}:8080"));
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("pod default/nope not found"), "{text}");

    // `netpol explain`: what isolates the backend and what its one rule allows it now.
    let out = Command::new(netpol()).args(["explain", "--root", root, &backend]).output().unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    let isolated = "ingress: isolated by NetworkPolicy default/backend-allow-ingress-frontend, \
                    NetworkPolicy default/backend-ingress-deny";
    let rule = format!(
        "NetworkPolicy default/backend-allow-ingress-frontend ingress[0]: from pods matching app=frontend \
         in default on every port (now: {front})"
    );
    assert!(text.contains(isolated) && text.contains(&rule), "{text}");
    assert!(text.contains("egress: not isolated"), "{text}");

    // Policy status: each policy selects the backend and is enforced.
    let wide = node.ok(&["get", "netpol", "-o", "wide"]);
    for name in ["backend-ingress-deny", "backend-allow-ingress-frontend"] {
        let row = wide.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{wide}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], ["1", "Enforced"], "{wide}");
    }

    // The metrics count the same verdicts: by direction and reason, and per policy.
    let socket = std::path::PathBuf::from(format!("/run/netpol/{root}.sock"));
    let (get, t) = (netpol_api::client::Method::GET, Duration::from_secs(5));
    let (_, body) = netpol_api::client::call(&socket, get, netpol_api::PATH_METRICS, None, t).unwrap();
    let metrics = String::from_utf8_lossy(&body);
    let value = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        value(
            "netpol_verdict_events_total{direction=\"ingress\",verdict=\"dropped\",reason=\"drop-policy\"}"
        ) >= 1.0
    );
    assert!(
        value("netpol_policy_hits_total{policy=\"NetworkPolicy default/backend-allow-ingress-frontend\"}")
            >= 1.0
    );
    assert!(value("netpol_map_entries{map=\"ENDPOINTS\"}") >= 4.0, "the lab's pods and the cluster DNS");

    // The filtered monitor saw the drop and nothing allowed.
    let (_, seen) = dropped.find(Duration::from_millis(500), |_| false);
    assert!(seen.iter().any(is_drop), "--verdict dropped missed the drop: {seen:?}");
    assert!(seen.iter().all(|v| v["verdict"] == "DROPPED"), "--verdict dropped showed others: {seen:?}");
    drop(all);
    drop(dropped);
    drop(node);
    assert_eq!(leftovers(root), Vec::<String>::new());
}

/// Audit mode for a namespace (its annotation): the lab's denied probe passes and is shown
/// as AUDIT with the reason it would have been dropped; trace and explain say so; the
/// metrics count it; without the annotation it is denied again. A node cannot switch to
/// audit mode while up.
#[test]
fn audit_mode_lets_denied_traffic_through_and_reports_it() {
    if need_root() {
        return;
    }
    let root = "test-aud";
    let node = Node::up(root, "10.244.208.0/24");
    let [front, not_front, backend] = backend_lab(&node);
    let to = format!("{backend}:8080");
    let probe = |from: &str| node.run(&["probe", from, &to, "--timeout", "500ms"]).status.code();
    assert_eq!(probe(&not_front), Some(1), "control: enforced, not-frontend is denied");

    let namespace = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  annotations: {{{annotations}}}\n"
        )
    };
    node.apply(&namespace("netpol.io/policy-audit-mode: \"true\""));
    let audits = Monitor::start(root, &["--verdict", "audit"]);
    let passed = netpol_tests::eventually(Duration::from_secs(5), || probe(&not_front) == Some(0));
    assert!(passed, "audit mode did not let the denied probe through");
    assert_eq!(probe(&front), Some(0), "control: the allowed flow still passes");
    let is_audit = |v: &Value| v["source"]["pod"] == not_front.as_str();
    let (shown, seen) = audits.find(Duration::from_secs(2), is_audit);
    let v = shown.unwrap_or_else(|| panic!("no AUDIT verdict shown; seen {seen:?}"));
    assert_eq!((v["verdict"].as_str(), v["code"].as_str()), (Some("AUDIT"), Some("drop-policy")));
    let reason = v["reason"].as_str().unwrap();
    let want = format!(
        "audit mode, passed: no policy selecting {backend} allows ingress from {not_front} on 8080/TCP"
    );
    assert!(reason.starts_with(&want), "{reason}");

    let out = Command::new(netpol()).args(["trace", "--root", root, &not_front, &to]).output().unwrap();
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("ingress {backend}: audit mode, passes: no policy selecting")), "{text}");
    let out = Command::new(netpol()).args(["explain", "--root", root, &backend]).output().unwrap();
    assert!(common::text(&out).contains("audit mode: what these policies would drop passes"));

    let socket = std::path::PathBuf::from(format!("/run/netpol/{root}.sock"));
    let (get, t) = (netpol_api::client::Method::GET, Duration::from_secs(5));
    let (_, body) = netpol_api::client::call(&socket, get, netpol_api::PATH_METRICS, None, t).unwrap();
    let metrics = String::from_utf8_lossy(&body);
    let audited =
        "netpol_verdict_events_total{direction=\"ingress\",verdict=\"audit\",reason=\"drop-policy\"}";
    assert!(metrics.lines().any(|l| l.starts_with(audited)), "{metrics}");

    // Enforced again without the annotation.
    node.apply(&namespace(""));
    let denied = netpol_tests::eventually(Duration::from_secs(5), || probe(&not_front) == Some(1));
    assert!(denied, "the probe still passes after audit mode ended");
    let out = node.run(&["up", "--audit"]);
    assert!(
        !out.status.success() && common::text(&out).contains("netpol local down` first"),
        "{}",
        common::text(&out)
    );
    drop(audits);
    drop(node);
    assert_eq!(leftovers(root), Vec::<String>::new());
}

/// `netpol monitor --debug --pod`: each decision step the datapath takes for the pod's
/// packets (parse, conntrack, ipcache, policy, verdict), in words, for that pod alone and
/// only while someone follows it.
#[test]
fn debug_steps_show_each_decision_for_one_pod_while_followed() {
    if need_root() {
        return;
    }
    let root = "test-dbg";
    let node = Node::up(root, "10.244.209.0/24");
    let [front, not_front, backend] = backend_lab(&node);
    let to = format!("{backend}:8080");
    let probe = |from: &str| node.run(&["probe", from, &to, "--timeout", "500ms"]).status.code();
    let debug_flag = || {
        let out = Command::new(common::netpol().with_file_name("netpol-agent"))
            .args(["--name", root, "datapath", "show", "-o", "json"])
            .output()
            .unwrap();
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let eps = shown["endpoints"].as_array().cloned().unwrap_or_default();
        eps.iter().filter(|e| e["debug"] == true).count()
    };
    assert_eq!(debug_flag(), 0, "control: no endpoint logs before anyone follows");

    let steps = Monitor::start(root, &["--debug", "--pod", &backend]);
    assert_eq!(debug_flag(), 1, "following the backend switches its endpoint's steps on");
    assert_eq!(probe(&not_front), Some(1));
    let mut seen = Vec::new();
    let mut step = |name: &str, want: &dyn Fn(&str) -> bool| {
        let (found, before) = steps
            .find(Duration::from_secs(2), |v| v["step"] == name && want(v["words"].as_str().unwrap_or("")));
        seen.extend(before);
        let v = found.unwrap_or_else(|| panic!("no {name} step as expected; seen {seen:?}"));
        seen.push(v.clone());
        v["words"].as_str().unwrap().to_string()
    };
    let parse = step("parse", &|w| w.contains(&not_front));
    assert!(parse.starts_with("TCP ") && parse.contains(&format!("-> {backend}:8080")), "{parse}");
    step("conntrack", &|w| w == "no entry: a new flow");
    step("ipcache", &|w| w.contains(&not_front));
    step("policy", &|w| w == "no policy allows it");
    step("verdict", &|w| w.starts_with("DROPPED (drop-policy)"));
    assert_eq!(probe(&front), Some(0));
    step("policy", &|w| w == "allowed by NetworkPolicy default/backend-allow-ingress-frontend ingress[0]");
    step("conntrack", &|w| w == "a reply" || w == "established");
    assert!(seen.iter().all(|v| v["pod"] == backend.as_str() && v["direction"].is_string()), "{seen:?}");

    drop(steps);
    assert!(
        netpol_tests::eventually(Duration::from_secs(5), || debug_flag() == 0),
        "still logging after the follower left"
    );
    let out = Command::new(netpol())
        .args(["monitor", "--root", root, "--debug", "--pod", "default/nope"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && common::text(&out).contains("pod default/nope is not on this node"),
        "{}",
        common::text(&out)
    );
    drop(node);
    assert_eq!(leftovers(root), Vec::<String>::new());
}
