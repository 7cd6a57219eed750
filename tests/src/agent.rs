//! The agent as a process, for suites that drive it as netpol-cni and `netpol local` do:
//! started in a node namespace with its own pins, socket and state directory, talked to
//! over its socket, killed (SIGKILL) and restarted at will, and torn down on drop — also
//! when the test fails.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::NetNs;

pub struct AgentProcess {
    bin: PathBuf,
    /// The node namespace it runs in (by name).
    netns: String,
    /// `--name`: its pin directory under /sys/fs/bpf.
    pub pins: String,
    pub dir: PathBuf,
    /// More arguments for `run`.
    args: Vec<String>,
    child: Option<Child>,
}

impl AgentProcess {
    /// A fresh agent (`bin`: the netpol-agent binary) in `ns`, named `test-agent-<prefix>`;
    /// returns once its API answers.
    pub fn start(bin: &Path, ns: &NetNs, prefix: &str) -> AgentProcess {
        AgentProcess::start_with(bin, ns, prefix, &[])
    }

    /// As [`AgentProcess::start`], with more arguments for `run`.
    pub fn start_with(bin: &Path, ns: &NetNs, prefix: &str, args: &[&str]) -> AgentProcess {
        let dir = std::env::temp_dir().join(format!("netpol-agent-{prefix}"));
        let pins = format!("test-agent-{prefix}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&pins));
        std::fs::create_dir_all(&dir).unwrap();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut a = AgentProcess { bin: bin.into(), netns: ns.name.clone(), pins, dir, args, child: None };
        a.restart();
        a
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Starts the process (again); returns once it answers.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(&self.bin)
            .args(["--name", &self.pins, "run"])
            .args(if self.args.iter().any(|a| a == "--node-name") {
                &[][..]
            } else {
                &["--node-name", "n1"][..]
            })
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket().exists() && self.try_api("GET", "/healthz", None).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent did not come up");
    }

    /// SIGTERM, and waits for the agent's shutdown path to finish.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The response body of a successful call, None otherwise.
    pub fn try_api(&self, method: &str, path: &str, body: Option<&Value>) -> Option<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail-with-body", "-X", method, "--unix-socket"]).arg(self.socket());
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = cmd.arg(format!("http://agent{path}")).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A call that must succeed, its body as JSON (null when it is not JSON).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let text =
            self.try_api(method, path, body).unwrap_or_else(|| panic!("{method} {path} {body:?} failed"));
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Runs `netpol-agent --name <pins> ARGS` in the node namespace (datapath show, monitor…).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(&self.bin)
            .args(["--name", &self.pins])
            .args(args);
        c
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = self.command(&["datapath", "teardown"]).output();
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&self.pins));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
