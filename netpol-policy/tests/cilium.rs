//! CiliumNetworkPolicy as users write it from Cilium's documentation: accepted verbatim and
//! lowered to the normalized form, or rejected naming the field. No root needed.

use netpol_policy::{
    cilium::{self, CiliumNetworkPolicy},
    entries::Protocol,
    names::NameMatch,
    policy::{Peer, Policy, PolicyKind, PortRef, PortSpec, Rule, Selector},
};
use serde_json::{json, Value};

fn cnp(body: Value) -> CiliumNetworkPolicy {
    let mut v = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                       "metadata": {"name": "songlaa", "namespace": "default"}});
    v.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

fn parse(body: Value) -> Vec<Policy> {
    cilium::parse(&cnp(body)).unwrap()
}

/// The rejection's field and message.
fn refused(body: Value) -> (String, String) {
    let e = cilium::parse(&cnp(body)).unwrap_err();
    assert_eq!(e.policy.kind, PolicyKind::CiliumNetworkPolicy);
    assert!(e.to_string().starts_with("CiliumNetworkPolicy default/songlaa: "), "{e}");
    (e.field, e.msg)
}

fn labels(pairs: &[(&str, &str)]) -> Selector {
    Selector { labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), exprs: vec![] }
}

fn ports(list: &[(Protocol, u16)]) -> Option<Vec<PortSpec>> {
    Some(
        list.iter()
            .map(|(protocol, p)| PortSpec { protocol: *protocol, port: Some(PortRef::Range(*p, *p)) })
            .collect(),
    )
}

/// The lab's policy, as Cilium's DNS-based policy documentation writes it.
fn lab_policy(dns: Value) -> Value {
    json!({"spec": {
    "endpointSelector": {"matchLabels": {"app": "curl-deployment"}},
    "egress": [
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}],
         "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": dns}}]},
        {"toFQDNs": [{"matchName": "songlaa.com"}],
         "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]}]}
    ]}})
}

#[test]
fn the_labs_policy_is_taken_as_cilium_documents_it() {
    let p = parse(lab_policy(json!([{"matchPattern": "*"}])));
    assert_eq!(p.len(), 1);
    let p = &p[0];
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("default", "songlaa"));
    assert_eq!(p.pod_selector, labels(&[("app", "curl-deployment")]));
    assert_eq!(p.ingress, None, "egress rules only: ingress stays open");
    let kube_dns = Peer::Pods {
        namespaces: Some(labels(&[("kubernetes.io/metadata.name", "kube-system")])),
        pods: labels(&[("k8s-app", "kube-dns")]),
    };
    let want = vec![
        Rule {
            peers: Some(vec![kube_dns]),
            ports: ports(&[(Protocol::Tcp, 53), (Protocol::Udp, 53)]),
            dns: Some(vec![NameMatch::All]),
        },
        Rule {
            peers: Some(vec![Peer::Names(vec![NameMatch::name("songlaa.com").unwrap()])]),
            ports: ports(&[(Protocol::Tcp, 80), (Protocol::Tcp, 443)]),
            dns: None,
        },
    ];
    assert_eq!(p.egress.as_ref(), Some(&want));
    // Narrowed to the one name (either way of writing it).
    for dns in [json!([{"matchName": "songlaa.com"}]), json!([{"matchPattern": "songlaa.com"}])] {
        let p = parse(lab_policy(dns));
        assert_eq!(p[0].egress.as_ref().unwrap()[0].dns, Some(vec![NameMatch::name("songlaa.com").unwrap()]));
    }
}

#[test]
fn specs_own_namespace_empty_rules_and_port_only_rules() {
    let p = parse(json!({"specs": [
        {"endpointSelector": {"matchLabels": {"any:app": "a"}}, "ingress": [{"fromEndpoints": [{}]}]},
        {"endpointSelector": {}, "egress": [{}], "ingress": [{"toPorts": [{"ports": [{"port": "8080"}]}]}]},
    ]}));
    assert_eq!(p.len(), 2);
    // `fromEndpoints: [{}]`: every pod of the policy's own namespace.
    let own = Peer::Pods { namespaces: None, pods: Selector::everything() };
    assert_eq!(p[0].pod_selector, labels(&[("app", "a")]));
    assert_eq!(p[0].ingress, Some(vec![Rule { peers: Some(vec![own]), ports: None, dns: None }]));
    assert_eq!(p[0].egress, None);
    // `egress: [{}]` isolates and allows nothing; ports alone allow them from everyone.
    assert_eq!(p[1].egress, Some(vec![Rule { peers: Some(vec![]), ports: None, dns: None }]));
    assert_eq!(
        p[1].ingress,
        Some(vec![Rule {
            peers: None,
            ports: ports(&[(Protocol::Tcp, 8080), (Protocol::Udp, 8080), (Protocol::Sctp, 8080)]),
            dns: None
        }])
    );
}

#[test]
fn namespace_labels_expressions_ranges_and_named_ports() {
    let p = parse(json!({"spec": {"endpointSelector": {}, "egress": [{
        "toEndpoints": [{"matchLabels": {"io.cilium.k8s.namespace.labels.team": "db"},
                         "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["a", "b"]},
                                              {"key": "k8s:role", "operator": "Exists"}]}],
        "toPorts": [{"ports": [{"port": "5000", "endPort": 5010, "protocol": "udp"}, {"port": "http"}, {"port": "0", "protocol": "TCP"}]}]}]}}));
    let rule = &p[0].egress.as_ref().unwrap()[0];
    let Some([Peer::Pods { namespaces: Some(ns), pods }]) = rule.peers.as_deref() else { panic!("{rule:?}") };
    assert_eq!(ns.labels, labels(&[("team", "db")]).labels);
    assert_eq!(ns.exprs[0].key, "kubernetes.io/metadata.name");
    assert_eq!(pods.exprs[0].key, "role");
    let want = vec![
        PortSpec { protocol: Protocol::Udp, port: Some(PortRef::Range(5000, 5010)) },
        // ANY with a port: each protocol's.
        PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Named("http".into())) },
        PortSpec { protocol: Protocol::Udp, port: Some(PortRef::Named("http".into())) },
        PortSpec { protocol: Protocol::Sctp, port: Some(PortRef::Named("http".into())) },
        PortSpec { protocol: Protocol::Tcp, port: None },
    ];
    assert_eq!(rule.ports, Some(want));
}

#[test]
fn everything_outside_the_subset_is_refused_naming_the_field() {
    let sel = json!({"matchLabels": {"app": "a"}});
    for (body, field, says) in [
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toCIDR": ["10.0.0.0/8"]}]}}),
            "spec.egress[0].toCIDR",
            "unknown field",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{}]}}]}]}}),
            "spec.egress[0].toPorts[0].rules.http",
            "unknown field",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toPorts": [{"ports": [{"port": "0"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}]}}),
            "spec.egress[0].toPorts[0].ports",
            "single port",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toPorts": [{"ports": [{"port": "53", "endPort": 54}], "rules": {"dns": [{"matchPattern": "*"}]}}]}]}}),
            "spec.egress[0].toPorts[0].ports",
            "single port",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "ingressDeny": [{}]}}),
            "spec.ingressDeny",
            "unknown field",
        ),
        (
            json!({"specs": [{"endpointSelector": sel}, {"endpointSelector": sel, "egress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "ICMP"}]}]}]}]}),
            "specs[1].egress[0].toPorts[0].ports[0].protocol",
            "not TCP, UDP or ANY",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toEndpoints": [{}], "toFQDNs": [{"matchName": "a.com"}]}]}}),
            "spec.egress[0].toFQDNs",
            "cannot be combined",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toFQDNs": [{"matchName": "a.com", "matchPattern": "*.a.com"}]}]}}),
            "spec.egress[0].toFQDNs[0]",
            "exactly one",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toFQDNs": [{"matchName": "a..com"}]}]}}),
            "spec.egress[0].toFQDNs[0].matchName",
            "1 to 63",
        ),
        (
            json!({"spec": {"endpointSelector": {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "x"}}}}),
            "spec.endpointSelector",
            "own namespace",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "ingress": [{"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]}]}}),
            "spec.ingress[0].fromEndpoints[0].matchLabels.reserved:host",
            "outside the subset",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "ingress": [{"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": []}}]}]}}),
            "spec.ingress[0].toPorts[0].rules",
            "egress only",
        ),
        (
            json!({"spec": {"endpointSelector": sel, "egress": [{"toPorts": [{"ports": [{"port": "80", "endPort": 70}]}]}]}}),
            "spec.egress[0].toPorts[0].ports[0].endPort",
            "outside 80-65535",
        ),
        (json!({"spec": {"egress": [{}]}}), "spec", "endpointSelector"),
        (json!({}), "spec", "spec or specs is required"),
    ] {
        let (f, msg) = refused(body);
        assert_eq!(f, field, "{msg}");
        assert!(msg.contains(says), "{field}: {msg}");
    }
}
