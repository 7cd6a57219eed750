//! The transparent DNS proxy for pods whose policy has DNS rules (`toPorts[].rules.dns`),
//! one module per concern: [`message`] (the wire format: the one question a query asks,
//! REFUSED, what an answer teaches) and [`learned`] (the addresses answers gave, with their
//! TTLs, bounded and persisted, which `toFQDNs` allow) and [`sockets`] (the transparent
//! sockets the datapath hands DNS to, and those that answer in a server's name).
pub mod learned;
pub mod message;
pub mod sockets;
