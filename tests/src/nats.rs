//! Real `nats-server` processes for the suites: the harness the `cairn`
//! library keeps for its cluster benchmarks too ([`cairn::nats_servers`]).

pub use cairn::nats_servers::*;
