//! Local mode end to end (root): the lab, kubectl-like errors, `down` leaving nothing, and
//! `up` after an agent crash. Each test runs its own local node (`--root`, pod range), and
//! takes it down on drop, also when it fails.
//!
//! netpol-agent and netpol-cni must sit next to the netpol binary: `cargo xtask test` builds
//! every binary before it runs the tests.

mod common;

use common::{examples, leftovers, netpol, text, Node};
use std::process::Command;

use netpol_tests::need_root;

#[test]
fn the_lab_runs_end_to_end_with_the_labs_outcomes() {
    if need_root() {
        return;
    }
    let root = "test-lab";
    let out = Command::new(netpol())
        .args(["local", "--root", root, "lab", "--pod-cidr", "10.244.201.0/24", "--examples"])
        .arg(examples())
        .output()
        .unwrap();
    let t = text(&out);
    let _cleanup = Node { root: root.into() };
    assert!(out.status.success(), "{t}");
    assert!(t.contains("0 mismatches"), "{t}");
    // The lab's own words, as local mode prints them.
    assert!(t.contains("deployment.apps/frontend created"));
    assert!(t.contains("HTTP/1.1 200 OK"));
    // curl's wording of exit 28 varies by version ("Connection timed out", "Timeout was reached").
    assert!(t.contains("curl: (28) "), "{t}");
    assert!(t.contains("backend-ingress-deny   app=backend"), "{t}");
    assert!(t.contains("networkpolicy.networking.k8s.io \"backend-ingress-deny\" deleted"));
    drop(_cleanup);
    assert_eq!(leftovers(root), Vec::<String>::new());
}

#[test]
fn errors_are_kubectl_like_and_leave_nothing_half_made() {
    if need_root() {
        return;
    }
    let node = Node::up("test-errs", "10.244.202.0/24");
    let dir = std::env::temp_dir().join("netpol-test-errs");
    std::fs::create_dir_all(&dir).unwrap();
    let bad_yaml = dir.join("bad.yaml");
    std::fs::write(&bad_yaml, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n").unwrap();
    let bad_kind = dir.join("kind.yaml");
    std::fs::write(&bad_kind, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap();
    let bad_svc = dir.join("svc.yaml");
    std::fs::write(
        &bad_svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: far}\nspec:\n  clusterIP: 192.168.7.7\n  ports: [{port: 80}]\n",
    )
    .unwrap();
    let bad_policy = dir.join("policy.yaml");
    std::fs::write(
        &bad_policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 90, endPort: 80}]\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["apply".into(), "-f".into(), bad_yaml.display().to_string()], "line 4"),
        (
            vec!["apply".into(), "-f".into(), bad_kind.display().to_string()],
            "no matches for kind \"ConfigMap\"",
        ),
        (
            vec!["apply".into(), "-f".into(), bad_policy.display().to_string()],
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            vec!["apply".into(), "-f".into(), bad_svc.display().to_string()],
            "spec.clusterIP: Invalid value: \"192.168.7.7\": provided IP is not in the valid range",
        ),
        (vec!["get".into(), "frobs".into()], "doesn't have a resource type \"frobs\""),
        (vec!["exec".into(), "nope".into(), "--".into(), "true".into()], "pods \"nope\" not found"),
        (vec!["delete".into(), "pod".into(), "nope".into()], "pods \"nope\" not found"),
        (vec!["apply".into(), "-f".into(), "/nonexistent.yaml".into()], "does not exist"),
    ];
    for (args, want) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = node.run(&a);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {t}");
        assert!(t.contains(want), "{args:?}: {t}");
        assert_eq!(t.trim().lines().count(), 1, "{args:?}: not one line: {t}");
    }
    // Nothing was made by the failed applies.
    let pods = node.ok(&["get", "pods", "-o", "name"]);
    assert!(pods.trim().is_empty() || pods.contains("No resources"), "{pods}");
    let policies = node.ok(&["get", "netpol", "-o", "name"]);
    assert!(!policies.contains("bad"), "{policies}");
    // A Service that names no ClusterIP gets one, shown as kubectl shows it.
    let svc = dir.join("good-svc.yaml");
    std::fs::write(&svc, "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n").unwrap();
    node.ok(&["apply", "-f", &svc.display().to_string()]);
    let ip = node.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(ip.trim(), "10.96.1.0", "{ip}");
    let table = node.ok(&["get", "svc"]);
    assert!(
        table.contains("CLUSTER-IP") && table.contains("10.96.1.0") && table.contains("80/TCP"),
        "{table}"
    );
    // up without root.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(netpol())
        .args(["local", "--root", "test-errs-nobody", "up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("needs root"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
    drop(node);
    assert_eq!(leftovers("test-errs"), Vec::<String>::new());
}

#[test]
fn up_after_a_crash_recovers_pods_and_policies_and_down_leaves_nothing() {
    if need_root() {
        return;
    }
    let root = "test-crash";
    let node = Node::up(root, "10.244.203.0/24");
    node.ok(&["apply", "-f", "simple-app.yaml", "-f", "backend-allow-ingress-frontend.yaml"]);
    let pod = |sel: &str| {
        node.ok(&["get", "pods", "-l", sel, "-o", "jsonpath={.items[0].metadata.name}"]).trim().to_string()
    };
    let (front, not_front, back) = (pod("app=frontend"), pod("app=not-frontend"), pod("app=backend"));
    let probe = |from: &str| {
        node.run(&["probe", &format!("default/{from}"), &format!("default/{back}:8080"), "--timeout", "1s"])
            .status
            .success()
    };
    assert!(probe(&front) && !probe(&not_front));
    // The agent dies hard, and a responder too.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/var/lib/netpol/{root}/runtime.json")).unwrap(),
    )
    .unwrap();
    let agent = state["agentPid"].as_u64().unwrap() as i32;
    let responder = state["pods"][format!("default/{back}")]["responderPid"].as_u64().unwrap() as i32;
    unsafe {
        libc::kill(agent, libc::SIGKILL);
        libc::kill(responder, libc::SIGKILL);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Enforcement holds while nothing runs (the responder is gone, so nothing answers).
    assert!(!probe(&not_front));
    let out = node.ok(&["up"]);
    assert!(out.contains("1 responders restarted"), "{out}");
    assert!(probe(&front), "the allowed flow did not come back");
    assert!(!probe(&not_front), "the denied flow passes after the restart");
    let policies = node.ok(&["get", "netpol"]);
    assert!(policies.contains("backend-allow-ingress-frontend"), "{policies}");
    drop(node);
    assert_eq!(leftovers(root), Vec::<String>::new());
}

/// The oversized-policy attack: one namespace's 43 KB policy (600 /32 ipBlocks × 500 ports,
/// 300k map keys) is refused at apply naming its budget, and costs the node nothing — another
/// namespace's deny is enforced afterwards, and new pods start.
#[test]
fn an_oversized_policy_is_refused_and_every_other_policy_stays_enforced() {
    if need_root() {
        return;
    }
    let root = "test-big";
    let node = Node::up(root, "10.244.204.0/24");
    let dir = std::env::temp_dir().join("netpol-test-big");
    std::fs::create_dir_all(&dir).unwrap();
    let pod = |ns: &str, name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
             spec:\n  containers:\n  - {{name: c, image: i, ports: [{{containerPort: 8080}}]}}\n"
        )
    };
    let cluster = dir.join("cluster.yaml");
    let namespaces = "apiVersion: v1\nkind: Namespace\nmetadata: {name: tenant}\n---\n\
                      apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\n";
    std::fs::write(&cluster, format!("{namespaces}{}---\n{}", pod("tenant", "t"), pod("other", "o")))
        .unwrap();
    node.ok(&["apply", "-f", cluster.to_str().unwrap()]);
    let probe = |from: &str, to: &str| {
        node.run(&["probe", from, &format!("{to}:8080"), "--timeout", "1s"]).status.success()
    };
    assert!(probe("tenant/t", "other/o"), "control: pods cannot talk before any policy");

    let mut big = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: big, namespace: tenant}\n\
         spec:\n  podSelector: {}\n  ingress:\n  - from:\n",
    );
    for i in 0..600 {
        big += &format!("    - ipBlock: {{cidr: 172.16.{}.{}/32}}\n", i / 256, i % 256);
    }
    big += "    ports:\n";
    for p in 0..500 {
        big += &format!("    - port: {}\n", 1000 + p);
    }
    let big_file = dir.join("big.yaml");
    std::fs::write(&big_file, &big).unwrap();
    assert!(big.len() > 30_000, "{} bytes (43 KB as JSON)", big.len());
    let out = node.run(&["apply", "-f", big_file.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "the oversized policy was accepted: {t}");
    assert!(t.contains("tenant/big") && t.contains("16384"), "{t}");
    assert!(!node.ok(&["get", "netpol", "-A"]).contains("big"));
    assert!(probe("other/o", "tenant/t"), "the refused policy isolates tenant/t");

    // Another namespace's deny, applied afterwards, is enforced; new pods start.
    let deny = dir.join("deny.yaml");
    std::fs::write(
        &deny,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: other}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    node.ok(&["apply", "-f", deny.to_str().unwrap()]);
    assert!(!probe("tenant/t", "other/o"), "the deny in another namespace is not enforced");
    let late = dir.join("late.yaml");
    std::fs::write(&late, pod("tenant", "late")).unwrap();
    node.ok(&["apply", "-f", late.to_str().unwrap()]);
    assert!(probe("tenant/late", "tenant/t"), "a new pod does not start or reach its namespace");
    let _ = std::fs::remove_dir_all(&dir);
    drop(node);
    assert_eq!(leftovers(root), Vec::<String>::new());
}

/// CiliumNetworkPolicies as users write them, enforced on real connections next to
/// NetworkPolicies (their allows are a union), listed and deleted as kubectl has them; one
/// outside the subset is refused naming its field; DNS rules never pass as plain L4 allows.
#[test]
fn cilium_network_policies_are_enforced_beside_network_policies() {
    if need_root() {
        return;
    }
    let root = "test-cnp";
    let node = Node::up(root, "10.244.205.0/24");
    let dir = std::env::temp_dir().join("netpol-test-cnp");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    node.ok(&["apply", "-f", "simple-app.yaml"]);
    let pod = |sel: &str| {
        node.ok(&["get", "pods", "-l", sel, "-o", "jsonpath={.items[0].metadata.name}"]).trim().to_string()
    };
    let (front, not_front, back) = (pod("app=frontend"), pod("app=not-frontend"), pod("app=backend"));
    let probe = |from: &str| {
        let to = format!("default/{back}:8080");
        node.run(&["probe", &format!("default/{from}"), &to, "--timeout", "1s"]).status.success()
    };
    assert!(probe(&front) && probe(&not_front), "control: both reach the backend before any policy");

    let ingress = file(
        "ingress.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: backend-from-frontend\n\
         spec:\n  endpointSelector:\n    matchLabels:\n      app: backend\n  ingress:\n  - fromEndpoints:\n\
         \x20   - matchLabels:\n        k8s:app: frontend\n    toPorts:\n    - ports:\n      - port: \"8080\"\n\
         \x20       protocol: TCP\n",
    );
    let out = node.ok(&["apply", "-f", &ingress]);
    assert!(out.contains("ciliumnetworkpolicy.cilium.io/backend-from-frontend created"), "{out}");
    assert!(probe(&front), "the allowed frontend is cut");
    assert!(!probe(&not_front), "not-frontend passes the CiliumNetworkPolicy");
    let table = node.ok(&["get", "cnp"]);
    assert!(table.contains("backend-from-frontend"), "{table}");

    // A NetworkPolicy's allow adds to the CiliumNetworkPolicy's.
    let np = file(
        "np.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: not-frontend-too}\n\
         spec:\n  podSelector: {matchLabels: {app: backend}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: not-frontend}}}]\n",
    );
    node.ok(&["apply", "-f", &np]);
    assert!(probe(&not_front) && probe(&front), "the union of both kinds' allows");
    node.ok(&["delete", "netpol", "not-frontend-too"]);
    assert!(!probe(&not_front));

    // DNS rules filter names: their port goes to the DNS proxy whole, never as a plain
    // allow — here the frontend's HTTP to the backend's port under a DNS rule never reaches
    // the backend (the proxy takes the connection and answers no HTTP).
    let dns = file(
        "dns.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: frontend-dns}\n\
         spec:\n  endpointSelector: {matchLabels: {app: frontend}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: backend}}]\n\
         \x20   toPorts:\n    - ports: [{port: \"8080\", protocol: ANY}]\n      rules:\n        dns: [{matchPattern: \"*\"}]\n",
    );
    // By address: the policy below isolates the frontend's egress, DNS included.
    let back_ip = node.ok(&["get", "pods", "-l", "app=backend", "-o", "jsonpath={.items[0].status.podIP}"]);
    let url = format!("http://{}:8080/", back_ip.trim());
    let http = |from: &str| {
        let out = node.run(&["exec", from, "--", "curl", "-sS", "-m", "2", "-o", "/dev/null", &url]);
        out.status.success()
    };
    assert!(http(&front), "control: the backend answers the frontend's HTTP");
    node.ok(&["apply", "-f", &dns]);
    assert!(!http(&front), "a DNS rule passed as a plain L4 allow");
    node.ok(&["delete", "CiliumNetworkPolicy", "frontend-dns"]);
    assert!(probe(&front));

    // Outside the subset: refused naming the field; what was enforced stays.
    let bad = file(
        "bad.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad}\n\
         spec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8]\n",
    );
    let out = node.run(&["apply", "-f", &bad]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("spec.egress[0].toCIDR"), "{t}");
    assert!(!node.ok(&["get", "cnp"]).contains("bad"));
    assert!(probe(&front) && !probe(&not_front));

    let out = node.ok(&["delete", "cnp", "backend-from-frontend"]);
    assert!(out.contains("ciliumnetworkpolicy.cilium.io \"backend-from-frontend\" deleted"), "{out}");
    assert!(probe(&not_front), "the deleted policy still isolates the backend");
    let _ = std::fs::remove_dir_all(&dir);
    drop(node);
    assert_eq!(leftovers(root), Vec::<String>::new());
}
