//! The transparent DNS proxy for pods whose policy has DNS rules (`toPorts[].rules.dns`),
//! one module per concern: [`message`] (the wire format: the one question a query asks,
//! REFUSED, what an answer teaches) and [`learned`] (the addresses answers gave, with their
//! TTLs, bounded and persisted, which `toFQDNs` allow).
pub mod learned;
pub mod message;
