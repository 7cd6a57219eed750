//! Decision steps of the endpoints being debugged (`EP_DEBUG`), one aya-log record each
//! (`netpol monitor --debug`): `ep=ID dir=DIR step=CODE a=.. b=.. c=.. d=..`, the fields
//! per step as `netpol_common::debug` describes them.
//!
//! Invariants: a step costs an endpoint without `EP_DEBUG` one test of its flags, and
//! nothing at all when the object is loaded with `AYA_LOG_LEVEL` 0 (the verifier then drops
//! every step as dead code: how the benchmark measures the test's cost). The record is
//! written by one function the programs call (never inlined), so the logging code is
//! verified once, apart from the decision path, and every field it reads is initialized.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::macro_support::{level_enabled, Level};
use netpol_common::{Endpoint, EP_DEBUG};

/// One step: its code and four numbers (`netpol_common::debug`).
#[repr(C)]
pub struct Record {
    pub ep_id: u32,
    pub dir: u32,
    pub step: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub d: u32,
}

/// Logs a step for `ep` if it is being debugged.
#[inline(always)]
pub fn step(ctx: &TcContext, ep: &Endpoint, dir: u8, step: u8, fields: [u32; 4]) {
    if level_enabled(Level::Debug) && ep.flags & EP_DEBUG != 0 {
        let [a, b, c, d] = fields;
        emit(ctx, &Record { ep_id: ep.ep_id, dir: dir as u32, step: step as u32, a, b, c, d });
    }
}

#[inline(never)]
fn emit(ctx: &TcContext, r: &Record) {
    aya_log_ebpf::debug!(
        ctx,
        "ep={} dir={} step={} a={} b={} c={} d={}",
        r.ep_id,
        r.dir,
        r.step,
        r.a,
        r.b,
        r.c,
        r.d
    );
}
