//! Wharf: reliable store-and-forward delivery of HTTP messages.
//!
//! # Layout
//!
//! [`config`] holds the typed TOML contract: the file ([`config::Config`])
//! and pipeline documents ([`config::Document`], the file without
//! `[server]`, TOML or JSON). Parsing rejects unknown keys; validation is
//! pure and gives the [`config::ValidConfig`] / [`config::ValidPipeline`]
//! that everything else takes. Errors name the key.
//!
//! [`pipeline`] owns what runs: it diffs the live document against a new
//! one and starts, changes or stops only what differs (stores, the route
//! table, processors), records every revision durably under
//! `data_dir/pipeline`, and recovers the live one at start. Nothing else
//! keeps a list of what runs.
//!
//! [`ingress`] serves the live route table (a snapshot, swapped whole by the
//! pipeline). It answers `202 {"id"}` only once the message is durable,
//! through a [`store::chain::StoreChain`] that adds write retries (of what
//! may succeed) and fail-over to a secondary store.
//!
//! [`store`] defines the [`store::Store`] trait (append, lease, ack, release,
//! depth, peek, browse, remove), [`store::Backend`] with [`store::open`] and its backends
//! (each a folder with its own `config.rs`); errors carry their kind
//! (transient, permanent, full, closed, unsupported, bad position); `store/mod.rs` states the contract,
//! `store/embedded` the durability design (SQLite, WAL, group commit) and
//! `store/amqp` the RabbitMQ one (publisher confirms, single active consumer,
//! how order survives retries, reconnects and deactivation, browsing a
//! dead-letter queue) and
//! `store/activemq` the ActiveMQ one (STOMP 1.2, receipts, exclusive
//! consumers, browsing, and removing from a dead-letter queue).
//!
//! [`processor`] takes messages from a store in order on a schedule (cron or
//! interval) or continuously, forwards them over HTTP or https (through a
//! proxy, signed, in lanes per `order_key` up to `concurrency` at once),
//! retries, throttles, and applies the failure action: deactivate (the
//! processor, or only the key), dead-letter or drop. Responses go
//! to a [`processor::handler::ResponseHandler`], the seam plugins fill.
//! `processor::lifecycle` is its one state (waiting, running, deactivated,
//! draining) and the deactivations kept across restarts.
//!
//! [`plugins`] runs WebAssembly components (worlds in `wit/`) as response
//! handlers and failure policies; it is the only module that touches
//! wasmtime, and each call runs in a fresh store under memory, time and fuel
//! limits. `plugins::registry` keeps deployed plugins' versions and live
//! pointer under `data_dir/plugins`, swaps versions atomically and tells
//! waiting processors when a plugin goes live; [`plugins::resolve`] is the
//! one place a processor's plugins are resolved (`run`, `check`, apply).
//!
//! [`tenant`] is the one list of tenants: each a pipeline, a plugin
//! registry, metrics, tokens and quotas of its own (the top-level config is
//! `default`); it keeps the ingress dispatch (which tenant a request is for)
//! in step. `tenant::quota` enforces the quotas: ingress asks it before it
//! stores, processors share its forward rate, plugin calls take their
//! instance through its gate (`plugins::gate`), applies are checked by it.
//!
//! [`admin`] serves health, Prometheus metrics, the JSON admin API
//! (processors, stores and their messages, replay and purge jobs, plugins,
//! pipeline apply / revisions / rollback / reload), each request scoped to
//! one tenant, and the web console (`runtime/console/`, built in); `admin::client` is what the CLI uses to reach it. [`api`]
//! holds the request and response types both sides share. The router and
//! the OpenAPI description (`/api/v1/openapi.json`) are made from the same
//! handlers, so they cannot drift apart (`admin::openapi`).
//!
//! [`dead_letters`] finds, replays and purges a store's messages by id or
//! filter (through `Store::browse`, `append_all`, `remove`), as jobs; a dead
//! letter carries its failure trail (`store::trail`).
//!
//! [`tls`] is the client TLS the forwarder and the STOMP store share.
//!
//! [`metrics`] owns the Prometheus registry; ingress, stores and processors
//! count through it without depending on the admin API.
//!
//! [`durable`] writes small files so that a crash leaves the old or the new.
//!
//! [`app`] wires it all together: [`app::run`] takes a validated config,
//! bound listeners and a shutdown future, so tests run whole instances
//! in-process on `127.0.0.1:0`; it also turns SIGHUP into a reload.
//!
//! [`retry`] is the backoff arithmetic shared by store writes and forwarding.

pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod dead_letters;
pub mod durable;
pub mod ingress;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod processor;
pub mod retry;
pub mod store;
pub mod tenant;
pub mod tls;
