//! The programs' debug steps (aya-log records, `netpol_common::debug`): read from their
//! ring, parsed into [`Step`]s for `netpol monitor --debug`.
//!
//! Invariants: only endpoints with `EP_DEBUG` log (the agent sets it while someone follows
//! them); a record that is not a step is skipped, never fatal.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::{Arc, Mutex},
};

use aya::Ebpf;
use aya_log::EbpfLogger;

use super::Direction;

/// The object's global that gates every aya-log record (0: none, dropped by the verifier).
pub const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// Keeps the messages aya-log hands over until they are drained.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(record.args().to_string());
    }

    fn flush(&self) {}
}

/// The programs' log ring.
pub struct DebugLog {
    logger: EbpfLogger<Collect>,
    lines: Collect,
}

impl DebugLog {
    /// Takes the object's log ring (None: an object without one).
    pub fn take(bpf: &mut Ebpf) -> Option<DebugLog> {
        let lines = Collect::default();
        let logger = EbpfLogger::init_with_logger(bpf, lines.clone()).ok()?;
        Some(DebugLog { logger, lines })
    }

    /// Every step waiting in the ring.
    pub fn drain(&mut self) -> Vec<Step> {
        self.logger.flush();
        let lines = std::mem::take(&mut *self.lines.0.lock().unwrap_or_else(|p| p.into_inner()));
        lines.iter().filter_map(|l| Step::parse(l)).collect()
    }
}

impl AsFd for DebugLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

impl AsRawFd for DebugLog {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

/// One decision step of a debugged endpoint's packet: its code and numbers
/// (`netpol_common::debug`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub ep_id: u32,
    pub direction: Direction,
    pub step: u8,
    pub values: [u32; 4],
}

impl Step {
    /// `ep=ID dir=DIR step=CODE a=A b=B c=C d=D`
    pub fn parse(line: &str) -> Option<Step> {
        let mut numbers = line.split_whitespace().map(|w| w.split_once('=')?.1.parse::<u32>().ok());
        let mut next = || numbers.next().flatten();
        let (ep_id, dir, step) = (next()?, next()?, next()?);
        let values = [next()?, next()?, next()?, next()?];
        Some(Step {
            ep_id,
            direction: Direction::from_raw(dir as u8),
            step: u8::try_from(step).ok()?,
            values,
        })
    }

    /// The step's name (`parse`, `conntrack`, ...).
    pub fn name(&self) -> &'static str {
        netpol_common::debug::STEP_NAMES.get(self.step as usize).copied().unwrap_or("unknown")
    }

    /// A value that is an address (network order).
    pub fn address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.values[i].to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_parsed_and_other_records_skipped() {
        let src = u32::from_ne_bytes([10, 0, 0, 1]);
        let line = format!("ep=7 dir=0 step=0 a=6 b={src} c=0 d={}", 40000u32 << 16 | 80);
        let s = Step::parse(&line).unwrap();
        assert_eq!((s.ep_id, s.direction, s.name()), (7, Direction::Ingress, "parse"));
        assert_eq!(
            (s.address(1), s.values[3] >> 16, s.values[3] & 0xffff),
            (Ipv4Addr::new(10, 0, 0, 1), 40000, 80)
        );
        assert_eq!(Step::parse("something else entirely"), None);
        assert_eq!(Step::parse("ep=x dir=0 step=0 a=1 b=2 c=3 d=4"), None);
        assert_eq!(Step::parse("ep=1 dir=0 step=0 a=1 b=2"), None);
    }
}
