//! netpol: the command line. `netpol local ...` runs a one-machine node (local mode), with
//! the same agent and datapath a cluster uses.
//!
//! No container images run in local mode: every container port a pod declares is served by
//! a built-in responder in the pod's network namespace — HTTP/1.1 answering 200 to HEAD and
//! GET on TCP ports, an echo on UDP ports.

mod calendar;
mod dns;
mod lab;
mod local;
mod responder;

use std::{net::Ipv4Addr, process::ExitCode, time::Duration};

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use local::{manifest, output, probe, Local, DEFAULT_ROOT};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "netpol", version, about = "netpol: Kubernetes NetworkPolicy enforcement with eBPF")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A one-machine node: pods are network namespaces, policies enforced by the eBPF
    /// datapath. Container ports are served by built-in responders (HTTP 200 to HEAD/GET on
    /// TCP, echo on UDP); no container images run.
    Local {
        /// Names this local node (its pins, state and socket); more than one can run.
        #[arg(long, global = true, default_value = DEFAULT_ROOT)]
        root: String,
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Serves a pod's ports (started by the local runtime inside the pod).
    #[command(hide = true)]
    Responder {
        /// The local node it belongs to (names the process for cleanup checks).
        #[arg(long)]
        node: String,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
        /// Serve the cluster's DNS on this port (UDP and TCP) instead of an echo/HTTP.
        #[arg(long, requires = "agent")]
        dns: Option<u16>,
        /// The agent's socket, where the DNS server reads the Services.
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
        /// Where the DNS server forwards names outside the cluster domain.
        #[arg(long)]
        upstream: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Start the local node (agent + datapath) in the background; idempotent.
    Up {
        /// The pod address range.
        #[arg(long)]
        pod_cidr: Option<String>,
    },
    /// Remove every pod, veth, netns, pin, mount and process the local node made.
    Down,
    /// Create or update Namespace, Pod, Deployment, Service, NetworkPolicy objects.
    Apply {
        /// FILE, DIR or - (stdin); multi-document YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Delete the objects in FILE, or KIND NAME[,NAME].
    Delete {
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// KIND NAME[,NAME] ...
        args: Vec<String>,
    },
    /// List objects: pods, deployments, services, networkpolicies (netpol), namespaces.
    Get {
        /// KIND[,KIND]
        kinds: String,
        /// Only these objects (with one name, json, yaml and jsonpath show the object
        /// itself, as kubectl does).
        names: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// wide, yaml, json, name, jsonpath=EXPR
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Run a host command inside the pod's network namespace and the agent's cgroup (its
    /// resolv.conf asks the cluster's DNS; Services are translated at the socket).
    Exec {
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Accepted for kubectl compatibility (stdin and terminal are always passed through).
        #[arg(short = 't', long = "tty")]
        _tty: bool,
        #[arg(short = 'i', long = "stdin")]
        _stdin: bool,
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run the NetworkPolicy lab (Tasks 2.2.1-2.2.6) end to end with the lab's own files,
    /// then compare its expected outcomes with the observed ones; leaves nothing behind.
    Lab {
        /// The lab's files (simple-app.yaml, ...).
        #[arg(long, default_value = "examples/lab")]
        examples: std::path::PathBuf,
        /// Leave the local node up afterwards.
        #[arg(long)]
        keep: bool,
        /// The pod address range of the local node the lab starts.
        #[arg(long)]
        pod_cidr: Option<String>,
    },
    /// Probe FROM TO:PORT[/PROTO] (NS/POD); exit 0 connected, 1 blocked. Or --matrix.
    Probe {
        from: Option<String>,
        to: Option<String>,
        #[arg(long)]
        matrix: bool,
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "80")]
        ports: Vec<u16>,
        #[arg(long, value_delimiter = ',', default_value = "TCP")]
        protocols: Vec<String>,
        #[arg(long, default_value = "1s")]
        timeout: String,
        #[arg(short, long, default_value = "table")]
        output: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            if msg.starts_with("error") || msg.starts_with("Error") {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

fn duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| anyhow!("error: invalid duration {s:?}"))?;
    Ok(Duration::from_secs_f64(match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => bail!("error: invalid duration {s:?}"),
    }))
}

fn run(cli: Cli) -> Result<u8> {
    let (root, cmd) = match cli.cmd {
        Cmd::Responder { pod, tcp, udp, dns, agent, upstream, .. } => {
            let dns = dns.zip(agent).map(|(port, agent)| responder::Dns { port, agent, upstream });
            responder::run(&pod, &tcp, &udp, dns)?;
            return Ok(0);
        }
        Cmd::Local { root, cmd } => (root, cmd),
    };
    let l = Local::new(&root);
    match cmd {
        LocalCmd::Up { pod_cidr } => println!("{}", l.up(pod_cidr.as_deref())?),
        LocalCmd::Lab { examples, keep, pod_cidr } => {
            let mut lab = lab::Lab::new(&root, &examples, pod_cidr.as_deref());
            let ok = lab.run_all();
            if !keep {
                lab.down()?;
            }
            return Ok(if ok? { 0 } else { 1 });
        }
        LocalCmd::Down => println!("{}", l.down()?),
        LocalCmd::Apply { files } => {
            let mut objects = Vec::new();
            for f in &files {
                objects.extend(manifest::read(f).map_err(|e| anyhow!(e))?);
            }
            let (lines, ok) = l.apply(objects)?;
            for line in lines {
                println!("{line}");
            }
            return Ok(if ok { 0 } else { 1 });
        }
        LocalCmd::Delete { files, namespace, args } => {
            let mut targets: Vec<(String, String, String)> = Vec::new();
            for f in &files {
                for o in manifest::read(f).map_err(|e| anyhow!(e))?.into_iter().rev() {
                    let ns = o["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
                    targets.push((
                        o["kind"].as_str().unwrap_or("").into(),
                        ns,
                        o["metadata"]["name"].as_str().unwrap_or("").into(),
                    ));
                }
            }
            if let Some((kind, names)) = args.split_first() {
                let kind = output::kind_from_alias(kind)?;
                // `delete netpol a, b` and `delete netpol a,b` alike.
                for n in names.iter().flat_map(|n| n.split(',')).map(str::trim).filter(|n| !n.is_empty()) {
                    targets.push((kind.to_string(), namespace.clone(), n.to_string()));
                }
                if names.is_empty() {
                    bail!("error: resource(s) were provided, but no name was specified");
                }
            } else if files.is_empty() {
                bail!("error: you must provide one or more resources by argument or filename (-f)");
            }
            let mut code = 0;
            for (kind, ns, name) in targets {
                match l.delete_one(&kind, &ns, &name) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("{e:#}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        LocalCmd::Get { kinds, names, namespace, all_namespaces, selector, output: fmt } => {
            let kinds: Vec<&str> = kinds
                .split(',')
                .filter(|k| !k.is_empty())
                .map(output::kind_from_alias)
                .collect::<Result<_>>()?;
            let pods = l.objects("Pod")?;
            let mut all: Vec<(&str, Vec<Value>)> = Vec::new();
            for kind in &kinds {
                let mut objs: Vec<Value> = l
                    .objects(kind)?
                    .into_iter()
                    .filter(|o| {
                        all_namespaces
                            || matches!(*kind, "Namespace" | "Node")
                            || o["metadata"]["namespace"] == namespace.as_str()
                    })
                    .filter(|o| {
                        selector
                            .as_deref()
                            .is_none_or(|s| output::selector_matches(s, &o["metadata"]["labels"]))
                    })
                    .filter(|o| names.is_empty() || names.iter().any(|n| o["metadata"]["name"] == n.as_str()))
                    .collect();
                if let Some(missing) =
                    names.iter().find(|n| !objs.iter().any(|o| o["metadata"]["name"] == n.as_str()))
                {
                    bail!(
                        "Error from server (NotFound): {} \"{missing}\" not found",
                        manifest::resource_name(kind)
                    );
                }
                objs.sort_by(|a, b| {
                    (a["metadata"]["namespace"].as_str(), a["metadata"]["name"].as_str())
                        .cmp(&(b["metadata"]["namespace"].as_str(), b["metadata"]["name"].as_str()))
                });
                all.push((kind, objs));
            }
            let items: Vec<Value> = all.iter().flat_map(|(_, o)| o.clone()).collect();
            // One object asked for by name is shown as itself, a selection as a List.
            let shown = match (names.len(), items.as_slice()) {
                (1, [one]) => one.clone(),
                _ => output::list(&items),
            };
            match fmt.as_deref() {
                Some("json") => println!("{}", serde_json::to_string_pretty(&shown)?),
                Some("yaml") => print!("{}", serde_yaml::to_string(&shown)?),
                Some("name") => {
                    for (kind, objs) in &all {
                        for o in objs {
                            println!(
                                "{}/{}",
                                manifest::resource_name(kind),
                                o["metadata"]["name"].as_str().unwrap_or("")
                            );
                        }
                    }
                }
                Some(j) if j.starts_with("jsonpath=") => {
                    print!("{}", output::jsonpath(&j["jsonpath=".len()..], &shown)?)
                }
                Some(other) if other != "wide" => {
                    bail!("error: unable to match a printer suitable for the output format {other:?}")
                }
                f => {
                    let mut first = true;
                    for (kind, objs) in &all {
                        if objs.is_empty() {
                            if kinds.len() == 1 {
                                if all_namespaces {
                                    eprintln!("No resources found");
                                } else {
                                    eprintln!("No resources found in {namespace} namespace.");
                                }
                            }
                            continue;
                        }
                        if !first {
                            println!();
                        }
                        first = false;
                        // kubectl names rows kind/name when several kinds are listed.
                        let prefix = if kinds.len() > 1 {
                            format!("{}/", manifest::resource_name(kind))
                        } else {
                            String::new()
                        };
                        let t = output::table(kind, objs, all_namespaces, f == Some("wide"), &pods, &prefix);
                        println!("{t}");
                    }
                }
            }
        }
        LocalCmd::Exec { namespace, pod, command, .. } => {
            let code = l.exec(&namespace, &pod, &command)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        LocalCmd::Probe { from, to, matrix, namespaces, ports, protocols, timeout, output: fmt } => {
            let timeout = duration(&timeout)?;
            let rt = l.load();
            let pods = l.objects("Pod")?;
            let ip_of = |key: &str| -> Result<Ipv4Addr> {
                let (ns, name) = key.split_once('/').unwrap_or(("default", key));
                pods.iter()
                    .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
                    .and_then(|p| p["status"]["podIP"].as_str()?.parse().ok())
                    .ok_or_else(|| anyhow!("Error from server (NotFound): pods {name:?} not found"))
            };
            let netns_of = |key: &str| -> Result<String> {
                let (ns, name) = key.split_once('/').unwrap_or(("default", key));
                l.pod_netns(ns, name)
            };
            if matrix {
                let mut keys: Vec<String> = rt
                    .pods
                    .keys()
                    .filter(|k| {
                        namespaces.is_empty() || namespaces.iter().any(|n| k.starts_with(&format!("{n}/")))
                    })
                    .cloned()
                    .collect();
                keys.sort();
                let mut jobs = Vec::new();
                for f in &keys {
                    for t in &keys {
                        for proto in &protocols {
                            for port in &ports {
                                jobs.push(probe::Job {
                                    from: (f.clone(), netns_of(f)?),
                                    to: (t.clone(), ip_of(t)?),
                                    port: *port,
                                    protocol: proto.to_uppercase(),
                                });
                            }
                        }
                    }
                }
                let cells = probe::run_all(jobs, timeout)?;
                match fmt.as_str() {
                    "json" => println!("{}", serde_json::to_string_pretty(&cells)?),
                    _ => print!("{}", probe::table(&cells)),
                }
                return Ok(0);
            }
            let (Some(from), Some(to)) = (from, to) else {
                bail!("error: probe needs FROM and TO:PORT[/PROTO], or --matrix")
            };
            // NS/POD:PORT[/PROTO]: the protocol is what follows the last '/' after the port.
            let (target, proto) = match to.rsplit_once('/') {
                Some((t, p)) if !p.contains(':') && t.contains(':') => (t.to_string(), p.to_uppercase()),
                _ => (to.clone(), "TCP".into()),
            };
            let (pod, port) = target
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("error: TO must be NS/POD:PORT[/PROTO], not {to:?}"))?;
            let port: u16 = port.parse().map_err(|_| anyhow!("error: invalid port {port:?}"))?;
            let connected = probe::probe(&netns_of(&from)?, ip_of(pod)?, port, &proto, timeout)?;
            println!("{from} -> {pod}:{port}/{proto}: {}", if connected { "connected" } else { "blocked" });
            return Ok(if connected { 0 } else { 1 });
        }
    }
    Ok(0)
}
