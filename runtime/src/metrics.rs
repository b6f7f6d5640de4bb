//! Prometheus metrics: one registry, handles cached per route, store and processor
//! so the hot paths only touch atomics. Every series carries a `tenant`
//! label: a [`Metrics`] is one tenant's handle on the instance's families
//! ([`Metrics::for_tenant`]).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    tenant: Arc<str>,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabel {
    tenant: Arc<str>,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    tenant: Arc<str>,
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessorLabel {
    tenant: Arc<str>,
    processor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    tenant: Arc<str>,
    processor: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabel {
    tenant: Arc<str>,
    processor: String,
    handler: String,
    /// The deployed plugin version; empty for built-in handlers and plugins named by path.
    version: String,
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// One tenant's handle on Wharf's metrics; clones of the families are shared.
pub struct Metrics {
    tenant: Arc<str>,
    families: Arc<Families>,
}

/// All of Wharf's metric families, every tenant's series in them.
struct Families {
    registry: Registry,
    accepted: Family<RouteLabel, Counter>,
    rejected: Family<RejectLabel, Counter>,
    stored: Family<StoreLabel, Counter>,
    depth: Family<StoreLabel, Gauge>,
    forwarded: Family<ProcessorLabel, Counter>,
    retried: Family<ProcessorLabel, Counter>,
    dead_lettered: Family<ProcessorLabel, Counter>,
    dropped: Family<ProcessorLabel, Counter>,
    latency: Family<ProcessorLabel, Histogram, fn() -> Histogram>,
    handler_calls: Family<HandlerLabel, Counter>,
    processor_state: Family<StateLabel, Gauge>,
    /// Serialises encoding, which needs `&Registry` while depths are refreshed.
    encode_lock: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Counters of one processor; clones share the values.
#[derive(Clone, Debug)]
pub struct ProcessorMetrics {
    pub forwarded: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub dropped: Counter,
    pub latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The instance's metrics, as the handle of the `default` tenant.
    pub fn new() -> Metrics {
        Metrics {
            tenant: Arc::from("default"),
            families: Arc::new(Families::new()),
        }
    }

    /// The handle of tenant `tenant` on the same families.
    pub fn for_tenant(&self, tenant: &str) -> Metrics {
        Metrics {
            tenant: Arc::from(tenant),
            families: self.families.clone(),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Families {
    fn new() -> Families {
        let mut registry = Registry::with_prefix("wharf");
        let m = Families {
            accepted: Family::default(),
            rejected: Family::default(),
            stored: Family::default(),
            depth: Family::default(),
            forwarded: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            handler_calls: Family::default(),
            processor_state: Family::default(),
            registry: Registry::default(),
            encode_lock: Mutex::new(()),
        };
        registry.register(
            "accepted",
            "Messages a route answered 202 for",
            m.accepted.clone(),
        );
        registry.register(
            "rejected",
            "Requests a route refused, by status",
            m.rejected.clone(),
        );
        registry.register(
            "stored",
            "Messages written, by the store that took them",
            m.stored.clone(),
        );
        registry.register(
            "store_depth",
            "Messages in a store, in-flight ones included",
            m.depth.clone(),
        );
        registry.register(
            "forwarded",
            "Messages delivered and handled",
            m.forwarded.clone(),
        );
        registry.register(
            "retried",
            "Forwarding attempts that failed and were retried",
            m.retried.clone(),
        );
        registry.register(
            "dead_lettered",
            "Messages moved to the dead-letter store",
            m.dead_lettered.clone(),
        );
        registry.register(
            "dropped",
            "Messages removed after failing for good",
            m.dropped.clone(),
        );
        registry.register(
            "forward_latency_seconds",
            "Time of one forwarding attempt, response body included",
            m.latency.clone(),
        );
        registry.register(
            "plugin_calls",
            "Plugin and built-in handler calls, by handler, version and outcome",
            m.handler_calls.clone(),
        );
        registry.register(
            "processor_state",
            "1 for the state a processor is in (waiting, running, deactivated, draining), 0 for the others",
            m.processor_state.clone(),
        );
        Families { registry, ..m }
    }
}

impl Metrics {
    /// The counter of 202s for a route.
    pub fn accepted(&self, route: &str) -> Counter {
        self.families
            .accepted
            .get_or_create(&RouteLabel {
                tenant: self.tenant.clone(),
                route: route.to_owned(),
            })
            .clone()
    }

    /// Counts a refused request.
    pub fn reject(&self, route: &str, status: u16) {
        self.families
            .rejected
            .get_or_create(&RejectLabel {
                tenant: self.tenant.clone(),
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// The counter of messages written to `store`.
    pub fn stored(&self, store: &str) -> Counter {
        self.families
            .stored
            .get_or_create(&StoreLabel {
                tenant: self.tenant.clone(),
                store: store.to_owned(),
            })
            .clone()
    }

    /// Counts a response handler or failure policy call.
    pub fn handler_call(
        &self,
        processor: &str,
        handler: &str,
        version: Option<u32>,
        outcome: &str,
    ) {
        self.families
            .handler_calls
            .get_or_create(&HandlerLabel {
                tenant: self.tenant.clone(),
                processor: processor.to_owned(),
                handler: handler.to_owned(),
                version: version.map(|v| v.to_string()).unwrap_or_default(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The counters of a processor.
    pub fn processor(&self, name: &str) -> ProcessorMetrics {
        let f = &self.families;
        let l = ProcessorLabel {
            tenant: self.tenant.clone(),
            processor: name.to_owned(),
        };
        ProcessorMetrics {
            forwarded: f.forwarded.get_or_create(&l).clone(),
            retried: f.retried.get_or_create(&l).clone(),
            dead_lettered: f.dead_lettered.get_or_create(&l).clone(),
            dropped: f.dropped.get_or_create(&l).clone(),
            latency: f.latency.get_or_create(&l).clone(),
        }
    }

    /// Prometheus text of every tenant, with store depths and processor
    /// states as given, each `(tenant, name, value)` (stores and processors
    /// no longer in a pipeline are left out); `all_states` names every state
    /// a processor can be in.
    pub fn encode(
        &self,
        depths: &[(Arc<str>, String, u64)],
        states: &[(Arc<str>, String, &str)],
        all_states: &[&str],
    ) -> String {
        let f = &self.families;
        let _guard = f.encode_lock.lock().unwrap_or_else(|p| p.into_inner());
        f.depth.clear();
        f.processor_state.clear();
        for (tenant, processor, current) in states {
            for state in all_states {
                f.processor_state
                    .get_or_create(&StateLabel {
                        tenant: tenant.clone(),
                        processor: processor.clone(),
                        state: (*state).to_owned(),
                    })
                    .set(i64::from(state == current));
            }
        }
        for (tenant, store, depth) in depths {
            f.depth
                .get_or_create(&StoreLabel {
                    tenant: tenant.clone(),
                    store: store.clone(),
                })
                .set(i64::try_from(*depth).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &f.registry);
        out
    }

    /// The tenant's name as a label value.
    pub fn tenant_label(&self) -> Arc<str> {
        self.tenant.clone()
    }
}
