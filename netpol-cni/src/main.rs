//! netpol-cni: a CNI 1.1 plugin (also speaks 0.3.0 – 1.0.0).
//!
//! ADD wires the pod (veth, address from the node's pod range, routes), then hands it to the
//! netpol agent, which attaches the datapath and applies the pod's policy before ADD returns,
//! so the pod is enforced before it gets any traffic. Any failure undoes everything ADD made.
//! DEL is idempotent; CHECK verifies the wiring and the registration; STATUS says whether ADD
//! can work; GC releases what no valid attachment owns.

mod agent;
mod config;
mod error;
mod ipam;
mod result;
mod sysctl;
mod wiring;

use std::{fs::File, io::Read, process::ExitCode};

use config::{claimed_version, Env, NetConf, SUPPORTED_VERSIONS};
use error::{code, CniError, Result};
use ipnet::Ipv4Net;
use netpol_api::EndpointRequest;
use serde_json::{json, Value};

use crate::{agent::Agent, ipam::Ipam, result::AddResult};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    match run(&stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&claimed_version(&stdin)));
            eprintln!("netpol-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<Value>> {
    let command = Env::command()?;
    if command == "VERSION" {
        return Ok(Some(
            json!({ "cniVersion": claimed_version(stdin), "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    let need = |v: &str| {
        if conf.at_least(v) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("{command} needs cniVersion {v} or later, not {}", conf.cni_version),
            ))
        }
    };
    match command.as_str() {
        "ADD" => add(&conf, &Env::read("ADD")?).map(Some),
        "DEL" => del(&conf, &Env::read("DEL")?).map(|_| None),
        "CHECK" => {
            need("0.4.0")?;
            check(&conf, &Env::read("CHECK")?).map(|_| None)
        }
        "STATUS" => {
            need("1.1.0")?;
            status(&conf).map(|_| None)
        }
        "GC" => {
            need("1.1.0")?;
            gc(&conf).map(|_| None)
        }
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
        )),
    }
}

/// The pod range: the configuration's, else the one the agent has for this node.
fn pod_range(conf: &NetConf, agent: &Agent) -> Result<Ipv4Net> {
    if let Some(r) = conf.pod_cidr {
        return Ok(r);
    }
    let node = agent.node()?;
    let cidr = node.pod_cidr.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("no podCIDR in the configuration, and the agent has none for node {}", node.node_name),
        )
    })?;
    config::parse_pod_cidr(&cidr).map_err(|m| CniError::new(code::INVALID_CONFIG, format!("the agent's {m}")))
}

fn add(conf: &NetConf, env: &Env) -> Result<Value> {
    let netns = File::open(&env.netns).map_err(|e| {
        CniError::new(code::INVALID_ENV, format!("CNI_NETNS {} cannot be opened: {e}", env.netns))
    })?;
    let agent = Agent::new(&conf.agent_socket);
    let range = pod_range(conf, &agent)?;
    let host_name = wiring::host_ifname(&env.container_id, &env.ifname);
    // A repeated ADD means the earlier attachment was abandoned (the spec forbids ADD twice
    // without DEL): start from a clean slate, keeping its address.
    wiring::del(&host_name)?;
    let ip = Ipam::open(&conf.data_dir, &conf.name)?.allocate(range, &env.container_id, &env.ifname)?;
    let release = || {
        if let Ok(mut ipam) = Ipam::open(&conf.data_dir, &conf.name) {
            let _ = ipam.release(&env.container_id, &env.ifname);
        }
    };
    let wired = match wiring::add(&netns, &env.ifname, &host_name, ip, conf.mtu) {
        Ok(w) => w,
        Err(e) => {
            release();
            return Err(e);
        }
    };
    let req = EndpointRequest {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        pod_namespace: env.pod_namespace.clone(),
        pod_name: env.pod_name.clone(),
        ip,
        host_ifname: wired.host_name.clone(),
        host_ifindex: wired.host_index,
        pod_uid: env.pod_uid.clone(),
    };
    if let Err(e) = agent.register(&req) {
        let _ = agent.unregister(&env.container_id, &env.ifname);
        let _ = wiring::del(&host_name);
        release();
        return Err(e);
    }
    let res = AddResult {
        interfaces: vec![
            result::Interface { name: wired.host_name, mac: wired.host_mac, mtu: conf.mtu, sandbox: None },
            result::Interface {
                name: env.ifname.clone(),
                mac: wired.pod_mac,
                mtu: conf.mtu,
                sandbox: Some(env.netns.clone()),
            },
        ],
        ip,
        gateway: wiring::GATEWAY,
        pod_interface: 1,
    };
    Ok(res.to_json(&conf.cni_version))
}

fn del(conf: &NetConf, env: &Env) -> Result<()> {
    let agent = Agent::new(&conf.agent_socket);
    // An agent that is gone has nothing to forget; a failing one is reported after the
    // local cleanup, so a retried DEL finds less to do.
    let unregistered = match agent.unregister(&env.container_id, &env.ifname) {
        Err(e) if e.code == code::TRY_AGAIN_LATER => Ok(()),
        r => r,
    };
    wiring::del(&wiring::host_ifname(&env.container_id, &env.ifname))?;
    Ipam::open(&conf.data_dir, &conf.name)?.release(&env.container_id, &env.ifname)?;
    unregistered
}

fn check(conf: &NetConf, env: &Env) -> Result<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult in the configuration"))?;
    let unknown = |m: String| CniError::new(code::UNKNOWN_CONTAINER, m);
    let mismatch = |m: String| CniError::new(code::CHECK_MISMATCH, m);
    let ip = Ipam::open(&conf.data_dir, &conf.name)?
        .find(&env.container_id, &env.ifname)?
        .ok_or_else(|| unknown(format!("no address is allocated to {}/{}", env.container_id, env.ifname)))?;
    if result::prev_ip(prev) != Some(ip) {
        return Err(mismatch(format!("prevResult does not report the allocated address {ip}")));
    }
    let netns = File::open(&env.netns).map_err(|e| unknown(format!("CNI_NETNS {}: {e}", env.netns)))?;
    wiring::check(&netns, &env.ifname, &wiring::host_ifname(&env.container_id, &env.ifname), ip)?;
    let status = Agent::new(&conf.agent_socket).status(&env.container_id, &env.ifname)?.ok_or_else(|| {
        mismatch(format!("{}/{} is not registered with the agent", env.container_id, env.ifname))
    })?;
    if status.ip != ip || !status.enforced {
        return Err(mismatch(format!(
            "the agent has {}/{} with {} (enforced: {}), expected {ip} enforced",
            env.container_id, env.ifname, status.ip, status.enforced
        )));
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<()> {
    let unavailable = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg).with_details(e.details);
    let agent = Agent::new(&conf.agent_socket);
    agent.health().map_err(unavailable)?;
    let range = pod_range(conf, &agent).map_err(unavailable)?;
    let used = Ipam::open(&conf.data_dir, &conf.name)?.list()?.len() as u64;
    let usable = (1u64 << (32 - range.prefix_len())) - 2;
    if used >= usable {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("pod range {range} is full ({used} of {usable} in use)"),
        ));
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<()> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let is_valid =
        |cid: &str, ifname: &str| valid.iter().any(|a| a.container_id == cid && a.ifname == ifname);
    let agent = Agent::new(&conf.agent_socket);
    let mut ipam = Ipam::open(&conf.data_dir, &conf.name)?;
    let range = conf.pod_cidr.or_else(|| pod_range(conf, &agent).ok());
    for a in ipam.list()? {
        if is_valid(&a.container_id, &a.ifname) {
            continue;
        }
        let _ = agent.unregister(&a.container_id, &a.ifname);
        wiring::del(&wiring::host_ifname(&a.container_id, &a.ifname))?;
        ipam.release_ip(a.ip)?;
    }
    // Registrations of this network's range that no valid attachment owns.
    if let Ok(endpoints) = agent.list() {
        for s in endpoints {
            let ours = range.is_some_and(|r| r.contains(&s.ip));
            if ours && !is_valid(&s.container_id, &s.ifname) {
                agent.unregister(&s.container_id, &s.ifname)?;
                wiring::del(&wiring::host_ifname(&s.container_id, &s.ifname))?;
            }
        }
    }
    Ok(())
}
