//! Paths of the guest components in `plugins/`, built for the tests.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));
