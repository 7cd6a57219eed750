//! The controller over in-memory maps (no root, no kernel): budgets refused at apply, failed
//! syncs retried with backoff, nothing enforced from a model that is not fully listed, and an
//! endpoint whose pod is unknown held closed. The loopback interface stands in for a veth.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use netpol_agent::{
    controller::{retry_failed_syncs, Agent, AgentError, Settings},
    enforcer::MemoryMaps,
    sources::{Change, WATCHED},
};
use netpol_api::EndpointRequest;
use netpol_common::{identity, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS};
use netpol_policy::{
    compiler::Budgets,
    model::{Kind, Object},
};
use netpol_tests::{objects, RemoveOnDrop};
use serde_json::{json, Value};

fn settings(name: &str, local: bool, budgets: Budgets) -> (Settings, RemoveOnDrop) {
    let state_dir = std::env::temp_dir().join(format!("netpol-test-controller-{name}"));
    let _ = std::fs::remove_dir_all(&state_dir);
    (Settings { budgets, ..Settings::new(state_dir.clone(), "n1", local) }, RemoveOnDrop(vec![state_dir]))
}

fn lo_endpoint(pod: &str) -> EndpointRequest {
    EndpointRequest {
        container_id: format!("c-{pod}"),
        ifname: "eth0".into(),
        netns: "/proc/1/ns/net".into(),
        pod_namespace: "x".into(),
        pod_name: pod.into(),
        ip: "10.0.0.2".parse().unwrap(),
        host_ifname: "lo".into(),
        host_ifindex: netpol_agent::datapath::ifindex("lo").unwrap(),
        pod_uid: None,
    }
}

fn pod(name: &str) -> Value {
    objects::pod("x", name, Some("10.0.0.2".parse().unwrap())).json()
}

/// Ingress to every pod of x from `blocks` /32 ipBlocks on `ports` ports.
fn policy(name: &str, blocks: u32, ports: u32) -> Value {
    objects::ip_blocks_policy("x", name, json!({}), blocks, ports).json()
}

fn flags(a: &Agent<MemoryMaps>) -> u32 {
    a.enforcer().state.endpoints.values().next().map(|e| e.flags).unwrap_or(0)
}

#[test]
fn a_policy_over_budget_is_refused_at_apply_and_the_rest_stays_enforced() {
    let (s, _dir) = settings("budget", true, Budgets { per_policy: 10, per_namespace: 15 });
    let mut a = Agent::start(MemoryMaps::default(), &s).unwrap();
    a.apply_objects(vec![pod("web")]).unwrap();
    a.register(lo_endpoint("web")).unwrap();
    let r = a.apply_objects(vec![policy("big", 3, 4), policy("fits", 2, 4)]).unwrap();
    let err = r[0].error.as_deref().unwrap_or("");
    assert!(err.contains("x/big") && err.contains("10"), "{r:?}");
    assert!(r[1].error.is_none(), "{r:?}");
    let big =
        netpol_policy::policy::PolicyId::new(netpol_policy::policy::PolicyKind::NetworkPolicy, "x", "big");
    assert!(!a.model().policies.contains_key(&big));
    assert_eq!(flags(&a), EP_ISOLATED_INGRESS);
    assert_eq!(a.enforcer().state.policy.len(), 8, "fits' 2 × 4 keys");
    // 8 + 8 would pass the namespace's 15: the second one is refused, naming the namespace.
    let r = a.apply_objects(vec![policy("more", 2, 4)]).unwrap();
    assert!(r[0].error.as_deref().unwrap_or("").contains("namespace x"), "{r:?}");
    assert_eq!(a.enforcer().state.policy.len(), 8);
    let m = a.metrics();
    assert!(m.contains("netpol_policies_rejected_total 2"), "{m}");
    let status = a.policy_status();
    assert_eq!(status.len(), 1, "refused policies never entered: {status:?}");
    assert_eq!((status[0].name.as_str(), status[0].state), ("fits", netpol_api::PolicyState::Enforced));
    assert_eq!(status[0].selected, 1);
}

#[test]
fn a_failed_sync_is_retried_with_backoff_until_it_lands() {
    let (s, _dir) = settings("retry", true, Budgets::default());
    let mut a = Agent::start(MemoryMaps::default(), &s).unwrap();
    a.apply_objects(vec![pod("web")]).unwrap();
    a.register(lo_endpoint("web")).unwrap();
    a.enforcer_mut().fail_syncs = 3;
    let before = a.enforcer().syncs;
    let applied = a.apply_objects(vec![policy("p", 1, 1)]);
    assert!(matches!(applied, Err(AgentError::Datapath(_))), "{applied:?}");
    assert_eq!(flags(&a), 0, "nothing landed yet");
    let agent = Arc::new(Mutex::new(a));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = std::time::Instant::now();
    rt.block_on(async {
        let retry = tokio::spawn(retry_failed_syncs(agent.clone()));
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if !agent.lock().unwrap().stats().last_sync_failed {
                break;
            }
        }
        retry.abort();
    });
    let a = agent.lock().unwrap();
    assert!(!a.stats().last_sync_failed, "still failing after {} syncs", a.enforcer().syncs);
    assert_eq!(flags(&a), EP_ISOLATED_INGRESS);
    assert_eq!(a.enforcer().state.policy.len(), 1);
    // The apply and two retries failed, the third landed, then nothing more: 200, 400 and
    // 800 ms apart (backoff, not a busy loop).
    assert_eq!(a.enforcer().syncs - before, 4);
    assert!(t.elapsed() >= std::time::Duration::from_millis(1200), "{:?}", t.elapsed());
}

#[test]
fn nothing_is_enforced_from_a_model_that_is_not_fully_listed() {
    let (s, _dir) = settings("listed", false, Budgets::default());
    let mut a = Agent::start(MemoryMaps::default(), &s).unwrap();
    // A new endpoint before any list: held closed, as INIT.
    a.register(lo_endpoint("web")).unwrap();
    let held = *a.enforcer().state.endpoints.values().next().unwrap();
    assert_eq!((held.identity, held.flags), (identity::INIT, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS));
    // What the maps hold (here: an isolation an earlier agent wrote) survives reconciles
    // while some kinds are still unlisted, whatever the partial model says.
    let isolated = |flags| netpol_common::Endpoint { flags, ..held };
    let ifindex = *a.enforcer().state.endpoints.keys().next().unwrap();
    a.enforcer_mut().state.endpoints.insert(ifindex, isolated(EP_ISOLATED_INGRESS));
    let obj = |v: Value| Object::Pod(Box::new(serde_json::from_value(v).unwrap()));
    let (_, synced) =
        a.handle(vec![Change::Upsert(obj(pod("web"))), Change::Relisted(Kind::Pod, Default::default())]);
    synced.unwrap();
    assert_eq!(
        a.enforcer().state.endpoints[&ifindex].flags,
        EP_ISOLATED_INGRESS,
        "a partial model was enforced"
    );
    // Every kind listed (web is back), without policies: now the model is enforced.
    let web = BTreeSet::from([("x".to_string(), "web".to_string())]);
    let mut relisted = vec![Change::Upsert(obj(pod("web"))), Change::Relisted(Kind::Pod, web)];
    let rest = WATCHED.into_iter().filter(|k| *k != Kind::Pod);
    relisted.extend(rest.map(|k| Change::Relisted(k, Default::default())));
    let (_, synced) = a.handle(relisted);
    synced.unwrap();
    assert!(a.is_synced());
    assert_eq!(a.enforcer().state.endpoints[&ifindex].flags, 0);
    assert_ne!(a.enforcer().state.endpoints[&ifindex].identity, identity::INIT);
}

#[test]
fn local_services_follow_their_pods_and_departed_udp_backends_are_released() {
    let (settings, _cleanup) = settings("svc", true, Budgets::default());
    let mut a = Agent::start(MemoryMaps::default(), &settings).unwrap();
    let dns = |name: &str, ip: &str| {
        objects::pod("x", name, Some(ip.parse().unwrap()))
            .label("app", "dns")
            .set(
                "spec.containers",
                json!([{"name": "c", "ports": [{"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]),
            )
            .json()
    };
    let svc = objects::service(
        "x",
        "dns",
        "10.96.0.10",
        json!({"app": "dns"}),
        json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]),
    );
    let results = a.apply_objects(vec![dns("d1", "10.0.0.5"), dns("d2", "10.0.0.6"), svc.json()]).unwrap();
    assert!(results.iter().all(|r| r.error.is_none()), "{results:?}");
    // Local mode derived the EndpointSlice: one frontend, two backends on the named port.
    let frontend = |a: &Agent<MemoryMaps>| {
        a.enforcer().state.services.iter().find(|(k, _)| k.slot == 0).map(|(_, v)| v.count)
    };
    assert_eq!(frontend(&a), Some(2), "{:?}", a.enforcer().state.services);
    let slots: BTreeSet<u16> = a
        .enforcer()
        .state
        .services
        .iter()
        .filter(|(k, _)| k.slot > 0)
        .map(|(_, v)| u16::from_be(v.port))
        .collect();
    assert_eq!(slots, BTreeSet::from([5353]));
    // d2 goes: its address is released (its connected sockets destroyed), d1 stays.
    a.delete_object(&(netpol_api::resources::ResourceKind::Pod, "x".into(), "d2".into())).unwrap();
    assert_eq!(frontend(&a), Some(1));
    let released: Vec<String> = a.enforcer().released.iter().map(|s| s.to_string()).collect();
    assert_eq!(released, vec!["10.0.0.6:5353"]);
}

#[test]
fn local_services_get_cluster_ips_as_the_api_server_gives_them() {
    let (settings, _cleanup) = settings("clusterip", true, Budgets::default());
    let mut a = Agent::start(MemoryMaps::default(), &settings).unwrap();
    let svc = |name: &str, ip: Option<&str>| {
        let mut o = objects::service("x", name, "", json!({"app": name}), json!([{"port": 80}]));
        o = match ip {
            Some(ip) => o.set("spec.clusterIP", json!(ip)),
            None => o.set("spec.clusterIP", Value::Null).set("spec.clusterIPs", Value::Null),
        };
        o.json()
    };
    let ip_of = |a: &Agent<MemoryMaps>, name: &str| {
        let key = ("x".to_string(), name.to_string());
        a.model().services[&key].spec.as_ref().unwrap().cluster_ip.clone().unwrap()
    };
    let applied = |r: Vec<netpol_api::ObjectResult>| r.into_iter().map(|r| r.error).collect::<Vec<_>>();
    // Asked for none: the first free addresses above the static band (10.96.1.0/16's first).
    let r = a.apply_objects(vec![svc("a", None), svc("b", None), svc("dns", Some("10.96.0.10"))]).unwrap();
    assert_eq!(applied(r), vec![None, None, None]);
    assert_eq!(
        (ip_of(&a, "a"), ip_of(&a, "b"), ip_of(&a, "dns")),
        ("10.96.1.0".into(), "10.96.1.1".into(), "10.96.0.10".into())
    );
    // Applied again without one, a Service keeps its address.
    assert_eq!(applied(a.apply_objects(vec![svc("a", None)]).unwrap()), vec![None]);
    assert_eq!(ip_of(&a, "a"), "10.96.1.0");
    // Refused as the API server refuses, naming the field; nothing else changes.
    let refused = |a: &mut Agent<MemoryMaps>, o| a.apply_objects(vec![o]).unwrap().remove(0).error.unwrap();
    let e = refused(&mut a, svc("c", Some("10.96.0.10")));
    assert!(e.contains("spec.clusterIP") && e.contains("already allocated"), "{e}");
    let e = refused(&mut a, svc("c", Some("192.168.0.1")));
    assert!(e.contains("not in the valid range") && e.contains("10.96.0.0/16"), "{e}");
    let e = refused(&mut a, svc("a", Some("10.96.0.77")));
    assert!(e.contains("immutable"), "{e}");
    assert_eq!(ip_of(&a, "a"), "10.96.1.0");
    assert!(!a.model().services.contains_key(&("x".to_string(), "c".to_string())));
    // Headless stays headless.
    assert_eq!(applied(a.apply_objects(vec![svc("h", Some("None"))]).unwrap()), vec![None]);
    assert_eq!(ip_of(&a, "h"), "None");
}

#[test]
fn in_a_cluster_routes_follow_the_nodes_and_pod_traffic_is_masqueraded_from_the_start() {
    let (mut s, _dir) = settings("nodes", false, Budgets::default());
    let cluster: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
    s.node_network = Some(netpol_agent::controller::NodeNetwork { cluster_cidr: cluster });
    let mut a = Agent::start(MemoryMaps::default(), &s).unwrap();
    assert_eq!(a.enforcer().masquerade, Some(cluster));
    let node = |name: &str, ip: [u8; 4], cidr: &str| {
        let n = objects::node(name, ip.into()).set("spec", json!({"podCIDR": cidr}));
        Object::Node(Box::new(serde_json::from_value(n.json()).unwrap()))
    };
    let nodes =
        |names: &[&str]| names.iter().map(|n| (String::new(), n.to_string())).collect::<BTreeSet<_>>();
    let mut listed = vec![
        Change::Upsert(node("n1", [172, 18, 0, 2], "10.244.0.0/24")),
        Change::Upsert(node("n2", [172, 18, 0, 3], "10.244.1.0/24")),
        Change::Relisted(Kind::Node, nodes(&["n1", "n2"])),
    ];
    let rest = WATCHED.into_iter().filter(|k| *k != Kind::Node);
    listed.extend(rest.map(|k| Change::Relisted(k, Default::default())));
    a.handle(listed).1.unwrap();
    let routes = |a: &Agent<MemoryMaps>| {
        a.enforcer().routes.iter().map(|(c, v)| (c.to_string(), v.to_string())).collect::<Vec<_>>()
    };
    assert_eq!(
        routes(&a),
        [("10.244.1.0/24".to_string(), "172.18.0.3".to_string())],
        "only the other node's"
    );
    a.handle(vec![Change::Upsert(node("n3", [172, 18, 0, 4], "10.244.2.0/24"))]).1.unwrap();
    assert_eq!(routes(&a).len(), 2);
    a.handle(vec![Change::Delete(Kind::Node, String::new(), "n2".into())]).1.unwrap();
    assert_eq!(
        routes(&a),
        [("10.244.2.0/24".to_string(), "172.18.0.4".to_string())],
        "n2's route went with it"
    );
}

/// What the DNS proxy learns is enforced before `learn` returns, survives an agent restart
/// (persisted in the state directory), and once past its TTL stops being allowed — unless a
/// live connection still uses the address.
#[test]
fn learned_names_are_enforced_survive_a_restart_and_expire_unless_in_use() {
    use netpol_agent::dnsproxy::message::Learning;
    use netpol_common::{DIR_EGRESS, IPPROTO_TCP};
    use netpol_policy::{lookup, names::Name};
    let (s, _dir) = settings("learned", true, Budgets::default());
    let fqdn = objects::cilium_policy(
        "x",
        "fqdn",
        json!({"endpointSelector": {}, "egress": [
            {"toFQDNs": [{"matchName": "songlaa.com"}]},
            {"toFQDNs": [{"matchName": "other.example"}]}
        ]}),
    );
    let mut a = Agent::start(MemoryMaps::default(), &s).unwrap();
    a.apply_objects(vec![pod("web"), fqdn.json()]).unwrap();
    a.register(lo_endpoint("web")).unwrap();
    let lo = netpol_agent::datapath::ifindex("lo").unwrap();
    let ip: std::net::Ipv4Addr = "198.51.100.7".parse().unwrap();
    let other: std::net::Ipv4Addr = "198.51.100.8".parse().unwrap();
    let allows = |a: &Agent<MemoryMaps>, to| {
        let st = &a.enforcer().state;
        matches!(lookup::outcome(st, lo, DIR_EGRESS, to, IPPROTO_TCP, 443), lookup::Outcome::Pass(_))
    };
    assert!(!allows(&a, ip), "control: nothing learned, nothing allowed");
    let answer =
        Learning { names: vec![Name::parse("songlaa.com").unwrap()], addresses: [ip].into(), ttl: 1 };
    a.learn(&answer, &[]).unwrap();
    assert!(allows(&a, ip), "the learned address is not allowed when learn returns");
    assert!(!allows(&a, other));

    drop(a);
    let mut a = Agent::start(MemoryMaps::default(), &s).unwrap();
    assert!(allows(&a, ip), "the learned address was lost in the restart");

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let rule = |a: &Agent<MemoryMaps>, index| {
        let rules = &a.compiled().rules;
        rules.iter().find(|(_, k)| k.policy.name == "fqdn" && k.index == index).map(|(id, _)| *id).unwrap()
    };
    let ours = rule(&a, 0);
    a.enforcer_mut().in_use = [(ours, ip)].into();
    a.expire_learned().unwrap();
    assert!(allows(&a, ip), "an address past its TTL was withdrawn under a live connection");
    // A connection another name's rule allowed (as when two names share an address) keeps
    // nothing of songlaa.com alive.
    a.enforcer_mut().in_use = [(rule(&a, 1), ip)].into();
    assert_eq!(a.expire_learned().unwrap(), None, "nothing left to expire");
    assert!(!allows(&a, ip), "an address past its TTL still allows new connections");
}
