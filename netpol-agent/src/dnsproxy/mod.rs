//! The transparent DNS proxy for pods whose policy has DNS rules (`toPorts[].rules.dns`),
//! one module per concern: [`forward`] (one query, start to end: judged, refused or
//! forwarded, its lesson enforced before the answer is released), [`message`] (the wire format: the one question a query asks,
//! REFUSED, what an answer teaches) and [`learned`] (the addresses answers gave, with their
//! TTLs, bounded and persisted, which `toFQDNs` allow), [`routing`] (the node delivering
//! what the datapath marks for the proxy locally) and [`sockets`] (the transparent
//! sockets the datapath hands DNS to, and those that answer in a server's name); [`server`]
//! runs them in the agent.
pub mod forward;
pub mod learned;
pub mod message;
pub mod routing;
pub mod server;
pub mod sockets;
