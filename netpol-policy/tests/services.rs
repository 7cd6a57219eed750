//! Services in the model and the compiler: frontends with their usable backends, named
//! target ports resolved per pod, local mode's EndpointSlices, and the ClusterIPs in the
//! ipcache. No root needed.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use netpol_common::{identity, ServiceKey};
use netpol_policy::{
    compiler::{compile, Allocators},
    entries::Protocol,
    model::{Key, Model, Object},
    services::{
        dns_addresses, endpoint_slices, frontends, map_entries_within, Backend, Frontend, FrontendLimit,
        MAX_BACKENDS,
    },
};
use netpol_tests::objects;
use serde_json::{json, Value};

fn service(ns: &str, name: &str, ip: &str, selector: Value, ports: Value) -> Service {
    serde_json::from_value(objects::service(ns, name, ip, selector, ports).json()).unwrap()
}

fn slice(ns: &str, name: &str, svc: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(
        objects::endpoint_slice(ns, name, svc, ports, &[]).set("endpoints", endpoints).json(),
    )
    .unwrap()
}

fn keyed<T>(items: Vec<(&str, &str, T)>) -> BTreeMap<Key, T> {
    items.into_iter().map(|(ns, n, t)| ((ns.to_string(), n.to_string()), t)).collect()
}

fn front(ip: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend { addr: ip.parse().unwrap(), port, protocol }
}

fn be(ip: &str, port: u16) -> Backend {
    Backend { addr: ip.parse().unwrap(), port }
}

#[test]
fn frontends_take_only_ready_not_terminating_backends_of_the_matching_port() {
    let ports = json!([{"name": "http", "port": 80, "targetPort": "web"}, {"name": "dns", "port": 53, "protocol": "UDP"}]);
    let svcs = keyed(vec![("x", "web", service("x", "web", "10.96.0.10", json!({"app": "web"}), ports))]);
    let eps = json!([
        {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
        {"addresses": ["10.0.0.3"]},
        {"addresses": ["10.0.0.4"], "conditions": {"ready": false}},
        {"addresses": ["10.0.0.5"], "conditions": {"ready": false, "terminating": true, "serving": true}},
    ]);
    let slices = keyed(vec![
        (
            "x",
            "web-a",
            slice("x", "web-a", "web", json!([{"name": "http", "port": 8080, "protocol": "TCP"}]), eps),
        ),
        // The same pod in a second slice counts once; another service's slice not at all.
        (
            "x",
            "web-b",
            slice(
                "x",
                "web-b",
                "web",
                json!([{"name": "http", "port": 9090}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
                json!([{"addresses": ["10.0.0.6"]}]),
            ),
        ),
        (
            "x",
            "other",
            slice(
                "x",
                "other",
                "other",
                json!([{"name": "http", "port": 1}]),
                json!([{"addresses": ["10.0.0.9"]}]),
            ),
        ),
    ]);
    let f = frontends(&svcs, &slices);
    assert_eq!(
        f[&front("10.96.0.10", 80, Protocol::Tcp)],
        vec![be("10.0.0.2", 8080), be("10.0.0.3", 8080), be("10.0.0.6", 9090)]
    );
    assert_eq!(f[&front("10.96.0.10", 53, Protocol::Udp)], vec![be("10.0.0.6", 5353)]);
    assert_eq!(f.len(), 2);
}

#[test]
fn headless_and_external_name_services_have_no_frontends() {
    let mut headless = service("x", "h", "None", json!({"app": "a"}), json!([{"port": 80}]));
    let f = frontends(&keyed(vec![("x", "h", headless.clone())]), &BTreeMap::new());
    assert!(f.is_empty());
    headless.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    headless.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.3".into());
    headless.spec.as_mut().unwrap().cluster_ips = None;
    assert!(frontends(&keyed(vec![("x", "h", headless)]), &BTreeMap::new()).is_empty());
}

#[test]
fn dns_names_are_cluster_ips_or_a_headless_services_ready_endpoints() {
    let web = service("x", "web", "10.96.0.10", json!({"app": "web"}), json!([{"port": 80}]));
    let db = service("x", "db", "None", json!({"app": "db"}), json!([{"port": 5432}]));
    let mut ext = service("x", "ext", "None", json!({}), json!([]));
    ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    let svcs = keyed(vec![("x", "web", web), ("x", "db", db), ("x", "ext", ext)]);
    let eps = json!([
        {"addresses": ["10.0.0.7"]},
        {"addresses": ["10.0.0.5"], "conditions": {"ready": true}},
        {"addresses": ["10.0.0.6"], "conditions": {"ready": false}},
        {"addresses": ["10.0.0.8"], "conditions": {"terminating": true}},
    ]);
    let slices = keyed(vec![
        ("x", "db-1", slice("x", "db-1", "db", json!([{"port": 5432}]), eps)),
        (
            "x",
            "db-2",
            slice("x", "db-2", "db", json!([{"port": 5432}]), json!([{"addresses": ["10.0.0.5"]}])),
        ),
        (
            "x",
            "web-1",
            slice("x", "web-1", "web", json!([{"port": 80}]), json!([{"addresses": ["10.0.0.2"]}])),
        ),
    ]);
    let names = dns_addresses(&svcs, &slices);
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(names[&("x".to_string(), "web".to_string())], vec![ip("10.96.0.10")]);
    assert_eq!(
        names[&("x".to_string(), "db".to_string())],
        vec![ip("10.0.0.5"), ip("10.0.0.7")],
        "a headless name is its ready, not terminating endpoints, each once"
    );
    assert!(!names.contains_key(&("x".to_string(), "ext".to_string())));
}

#[test]
fn local_slices_resolve_named_target_ports_per_pod() {
    let ports = json!([{"name": "http", "port": 80, "targetPort": "web"}, {"name": "raw", "port": 81, "targetPort": 7000}]);
    let svc = service("x", "web", "10.96.0.10", json!({"app": "web"}), ports);
    let pod = |name: &str, ip: &str, web_port: Option<u16>| {
        let mut p = objects::pod("x", name, Some(ip.parse().unwrap())).label("app", "web");
        if let Some(port) = web_port {
            p = p.set(
                "spec.containers",
                json!([{"name": "c", "ports": [{"name": "web", "containerPort": port}]}]),
            );
        }
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(p.json()).unwrap()
    };
    let other: k8s_openapi::api::core::v1::Pod = serde_json::from_value(
        objects::pod("x", "db", Some(Ipv4Addr::new(10, 0, 0, 9))).label("app", "db").json(),
    )
    .unwrap();
    let pods = [
        pod("a", "10.0.0.2", Some(8080)),
        pod("b", "10.0.0.3", Some(9090)),
        pod("c", "10.0.0.4", None),
        other,
    ];
    let slices = endpoint_slices(&svc, &pods);
    assert_eq!(slices.len(), 3, "one slice per distinct port mapping: {slices:#?}");
    let mut m = Model::default();
    m.upsert(Object::Service(Box::new(svc))).unwrap();
    for s in slices {
        m.upsert(Object::EndpointSlice(Box::new(s))).unwrap();
    }
    let f = frontends(&m.services, &m.endpoint_slices);
    assert_eq!(f[&front("10.96.0.10", 80, Protocol::Tcp)], vec![be("10.0.0.2", 8080), be("10.0.0.3", 9090)]);
    // c has no port named web: it serves only the numeric target port.
    assert_eq!(
        f[&front("10.96.0.10", 81, Protocol::Tcp)],
        vec![be("10.0.0.2", 7000), be("10.0.0.3", 7000), be("10.0.0.4", 7000)]
    );
}

#[test]
fn the_compiler_writes_frontends_slots_and_cluster_ips() {
    let mut m = Model::default();
    let svc =
        service("x", "web", "10.96.0.10", json!({"app": "web"}), json!([{"port": 80, "targetPort": 8080}]));
    m.upsert(Object::Service(Box::new(svc))).unwrap();
    let ports = json!([{"port": 8080}]);
    let s =
        slice("x", "web-1", "web", ports, json!([{"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}]));
    m.upsert(Object::EndpointSlice(Box::new(s))).unwrap();
    let empty = service("x", "none", "10.96.0.11", json!({"app": "nothing"}), json!([{"port": 80}]));
    m.upsert(Object::Service(Box::new(empty))).unwrap();
    let c = compile(&m, "n1", &[], &mut Allocators::default());
    let key = |ip: [u8; 4], slot| ServiceKey {
        addr: u32::from_ne_bytes(ip),
        port: 80u16.to_be(),
        proto: Protocol::Tcp.raw(),
        _pad: 0,
        slot,
    };
    let svc = &c.state.services;
    assert_eq!(svc[&key([10, 96, 0, 10], 0)].count, 2);
    assert_eq!(svc[&key([10, 96, 0, 10], 1)].addr, u32::from_ne_bytes([10, 0, 0, 2]));
    assert_eq!(svc[&key([10, 96, 0, 10], 2)].port, 8080u16.to_be());
    assert_eq!(svc[&key([10, 96, 0, 11], 0)].count, 0, "a frontend without backends refuses");
    assert_eq!(svc.len(), 4);
    for ip in ["10.96.0.10", "10.96.0.11"] {
        let net = ipnet::Ipv4Net::new(ip.parse().unwrap(), 32).unwrap();
        assert_eq!(c.state.ipcache[&net].identity, identity::SERVICE, "{ip}");
    }
}

#[test]
fn the_services_map_stays_bounded_and_small_services_go_first() {
    let backends = |n: u32| -> Vec<Backend> {
        (0..n).map(|i| be(&Ipv4Addr::from(0x0a00_0000 + i).to_string(), 80)).collect()
    };
    let fronts: BTreeMap<Frontend, Vec<Backend>> = [
        (front("10.96.0.1", 80, Protocol::Tcp), backends(3)),
        (front("10.96.0.2", 80, Protocol::Tcp), backends(50)),
        (front("10.96.0.3", 80, Protocol::Tcp), backends(4)),
        (front("10.96.0.4", 80, Protocol::Tcp), backends(MAX_BACKENDS as u32 + 5)),
    ]
    .into();
    // Room for the four slot 0s and 10 backends: the two small frontends, nothing else.
    let (entries, limits) = map_entries_within(&fronts, 14);
    assert!(entries.len() <= 14, "{}", entries.len());
    let count = |ip| count_in(&entries, ip);
    assert_eq!((count([10, 96, 0, 1]), count([10, 96, 0, 3])), (Some(3), Some(4)));
    assert_eq!(count([10, 96, 0, 2]), Some(0), "a frontend without room refuses, it is not half written");
    assert_eq!(limits[&front("10.96.0.2", 80, Protocol::Tcp)], FrontendLimit::NoRoom { backends: 50 });
    // Plenty of room: the huge one is cut to MAX_BACKENDS, the lowest addresses kept.
    let (entries, limits) = map_entries_within(&fronts, 10_000);
    assert_eq!(count_in(&entries, [10, 96, 0, 4]), Some(MAX_BACKENDS as u32));
    assert_eq!(
        limits[&front("10.96.0.4", 80, Protocol::Tcp)],
        FrontendLimit::Truncated { backends: MAX_BACKENDS + 5 }
    );
    assert_eq!(limits.len(), 1);
}

fn count_in(entries: &BTreeMap<ServiceKey, netpol_common::ServiceValue>, ip: [u8; 4]) -> Option<u32> {
    entries.iter().find(|(k, _)| k.slot == 0 && k.addr == u32::from_ne_bytes(ip)).map(|(_, v)| v.count)
}
