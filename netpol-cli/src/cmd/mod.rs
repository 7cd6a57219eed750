//! One module per verb of `netpol local` (each an `Args` and a `run`), plus the hidden
//! `responder` the runtime starts inside pods. Shared argument parsers live here.

pub mod apply;
pub mod delete;
pub mod down;
pub mod exec;
pub mod get;
pub mod internet;
pub mod lab;
pub mod probe;
pub mod responder;
pub mod up;

use std::time::Duration;

use netpol_api::resources::ResourceKind;

/// A kind as typed (`pods`, `po`, `deploy`, `svc`, `netpol`, `ns`, `deployments.apps`, ...).
pub fn kind(s: &str) -> Result<ResourceKind, String> {
    ResourceKind::parse(s).ok_or_else(|| format!("the server doesn't have a resource type {s:?}"))
}

/// `1s`, `500ms`, `2m`, or plain seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    Ok(Duration::from_secs_f64(match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration {s:?}")),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_and_kinds_parse_as_kubectl_takes_them() {
        assert_eq!(super::duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(super::duration("2m").unwrap().as_secs(), 120);
        assert!(super::duration("2h").is_err());
        assert!(super::kind("deploy").is_ok() && super::kind("frob").is_err());
    }
}
