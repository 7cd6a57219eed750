//! `netpol local down`: remove every pod, veth, netns, pin, mount and process the node made.

use anyhow::Result;

use crate::local::Local;

pub fn run(local: &Local) -> Result<u8> {
    println!("{}", local.down()?);
    Ok(0)
}
