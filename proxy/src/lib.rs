//! Permit's registrar and stateful proxy.
//!
//! I/O contract: [`engine::Proxy`] is sans-IO (bytes and `now` in, [`Transmit`]s and the
//! next wake-up out); changed bindings go to a store worker that commits them in groups
//! ([`commit`]), and a REGISTER is answered only after its group committed, so an
//! answered registration is durable. The binary (`main.rs`) wires it to `sip-net`.
//!
//! [`Transmit`]: sip_core::transport::Transmit

pub mod admin;
pub mod auth;
pub mod commit;
pub mod config;
pub mod control;
pub mod engine;
pub mod gate;
mod keyed;
pub mod keys;
pub mod limiter;
pub mod location;
pub mod mailbox;
pub mod manage;
pub mod ops;
pub mod permits;
pub mod pg;
pub mod registrar;
pub mod relay;
pub mod route;
pub mod shard;
pub mod store;
pub mod upload;
pub mod users;
