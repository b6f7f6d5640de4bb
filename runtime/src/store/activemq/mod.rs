//! ActiveMQ Classic over STOMP 1.2 (the guide's own broker).
//!
//! Under construction: this folder holds the frame codec (`frame`) so far.
//! The store itself (receipted, pipelined SENDs; `client-individual` acks
//! only when an outcome is final; exclusive subscriptions for several
//! instances; browsing for depth and peek) is not written yet, and
//! `backend = "activemq"` is not accepted.
//!
//! Why a codec of Wharf's own: of the STOMP crates on crates.io,
//! `tokio-stomp-2` is built on nom 4 and does not claim STOMP 1.2 header
//! escaping, and `iridium-stomp` says it is in early development and
//! reconnects and resubscribes by itself, which would fight the store's own
//! reconnect and ack rules. The frame format is small; `frame.rs` states it.

pub mod frame;
