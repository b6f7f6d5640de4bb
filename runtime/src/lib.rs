//! Wharf: reliable store-and-forward delivery of HTTP messages.
//!
//! # Layout
//!
//! [`config`] holds the typed TOML contract. Parsing rejects unknown keys;
//! `validate()` is pure and turns a [`config::Config`] into the
//! [`config::ValidConfig`] that everything else takes. Errors name the key.
//!
//! [`ingress`] serves the configured routes. It answers `202 {"id"}` only once
//! the message is durable, through a [`store::chain::StoreChain`] that adds
//! write retries and fail-over to a secondary store.
//!
//! [`store`] defines the [`store::Store`] trait (append, lease, ack, release,
//! depth, peek) and its backends; `store/mod.rs` states the contract,
//! `store/embedded` the durability design (SQLite, WAL, group commit) and
//! `store/amqp` the RabbitMQ one (publisher confirms, single active consumer,
//! how order survives retries, reconnects and deactivation).
//!
//! [`processor`] takes messages from a store in order on a schedule (cron or
//! interval) or continuously, forwards them over HTTP, retries, throttles, and
//! applies the failure action: deactivate, dead-letter or drop. Responses go
//! to a [`processor::handler::ResponseHandler`], the seam plugins fill.
//!
//! [`plugins`] runs WebAssembly components (worlds in `wit/`) as response
//! handlers and failure policies; it is the only module that touches
//! wasmtime, and each call runs in a fresh store under memory, time and fuel
//! limits. `plugins::registry` keeps deployed plugins' versions and live
//! pointer under `data_dir/plugins` and swaps versions atomically.
//!
//! [`admin`] serves health, Prometheus metrics and the JSON admin API
//! (processors, stores, plugin deploy and rollback); `admin::client` is what
//! the CLI's `deploy`, `plugins` and `rollback` use to reach it.
//!
//! [`app`] wires it all together: [`app::run`] takes a validated config,
//! bound listeners and a shutdown future, so tests run whole instances
//! in-process on `127.0.0.1:0`.
//!
//! [`retry`] is the backoff arithmetic shared by store writes and forwarding.

pub mod admin;
pub mod app;
pub mod config;
pub mod ingress;
pub mod plugins;
pub mod processor;
pub mod retry;
pub mod store;
