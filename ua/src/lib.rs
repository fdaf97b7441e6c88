//! Permit's user agent: registration, calls, the answer to the proxy's load query and
//! the management of the own permit list, as a sans-IO engine ([`Ua`]) on the same
//! `sip-core` pieces as the proxy, plus G.711 audio over RTP ([`media`]).
//!
//! # I/O contract
//!
//! [`Ua`] and everything it uses read no clock, open no socket and draw no randomness
//! of their own: time is the `now` argument, randomness the rng given to [`Ua::new`],
//! bytes come in through [`Ua::handle_received`] and go out through
//! [`Ua::poll_transmit`]. [`shell`] is the thin tokio driver that binds the sockets
//! (through `sip-net`), [`commands`] the CLI's commands on top of it (media, output,
//! exit codes); `permit-ua` (the binary) is wiring and CLI only.

pub mod auth;
pub mod call;
pub mod commands;
pub mod dialog;
pub mod engine;
pub mod inbox;
pub mod keys;
pub mod media;
pub mod outcome;
pub mod permit;
pub mod policy;
pub mod publish;
pub mod register;
pub mod request;
pub mod sdp;
pub mod send;
pub mod settings;
pub mod shell;
pub mod video;

pub use engine::{CallId, Event, Ua, UaConfig};
pub use outcome::CallOutcome;
pub use publish::PermitChange;
pub use request::Local;
