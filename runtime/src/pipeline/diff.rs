//! What an apply changes: stores, routes and processors, each added,
//! removed, changed (with the keys that changed) or unchanged.
//!
//! Documents are compared as written (their JSON form), key by key: a key
//! that was set and is now absent counts as changed even if the default
//! equals the old value. Routes are matched by `path`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The diff of one kind of object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Section {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<Change>,
    pub unchanged: Vec<String>,
}

/// One changed object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub name: String,
    /// The keys whose values differ, sorted.
    pub keys: Vec<String>,
    /// Why it is restarted although its own keys are the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
}

/// What an apply changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diff {
    pub stores: Section,
    pub routes: Section,
    pub processors: Section,
}

impl Diff {
    /// From the document live now to `new` (both in their JSON form).
    pub fn between(old: &Value, new: &Value) -> Diff {
        Diff {
            stores: section(&named(old, "stores"), &named(new, "stores")),
            routes: section(&routes(old), &routes(new)),
            processors: section(&named(old, "processors"), &named(new, "processors")),
        }
    }

    /// Whether the apply changes nothing.
    pub fn is_empty(&self) -> bool {
        [&self.stores, &self.routes, &self.processors]
            .iter()
            .all(|s| s.added.is_empty() && s.removed.is_empty() && s.changed.is_empty())
    }

    /// Marks processor `name` as changed `because` of something outside its
    /// own keys (its store is reopened), unless it is changed, added or removed already.
    pub fn restart(&mut self, name: &str, because: String) {
        let p = &mut self.processors;
        if let Some(at) = p.unchanged.iter().position(|n| n == name) {
            p.unchanged.remove(at);
            p.changed.push(Change {
                name: name.to_owned(),
                keys: Vec::new(),
                because: Some(because),
            });
            p.changed.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }

    /// The diff for people: one line per object that changes, `+` added,
    /// `-` removed, `~` changed (with its keys), and a count of the rest.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let sections = [
            ("store", &self.stores),
            ("route", &self.routes),
            ("processor", &self.processors),
        ];
        for (kind, s) in sections {
            for name in &s.added {
                out.push_str(&format!("  + {kind} {name}\n"));
            }
            for name in &s.removed {
                out.push_str(&format!("  - {kind} {name}\n"));
            }
            for c in &s.changed {
                let what = match (&c.because, c.keys.is_empty()) {
                    (Some(because), true) => because.clone(),
                    (Some(because), false) => format!("{}; {because}", c.keys.join(", ")),
                    (None, _) => c.keys.join(", "),
                };
                out.push_str(&format!("  ~ {kind} {} ({what})\n", c.name));
            }
        }
        if out.is_empty() {
            out.push_str("  no changes\n");
        }
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        out.push_str(&format!(
            "  unchanged: {}, {}, {}\n",
            plural(self.stores.unchanged.len(), "store"),
            plural(self.routes.unchanged.len(), "route"),
            plural(self.processors.unchanged.len(), "processor"),
        ));
        out
    }
}

/// The objects of table `key` (`stores`, `processors`) by name.
fn named(doc: &Value, key: &str) -> BTreeMap<String, Value> {
    doc.get(key)
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The routes by path.
fn routes(doc: &Value) -> BTreeMap<String, Value> {
    doc.get("routes")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|r| {
                    let path = r.get("path").and_then(Value::as_str).unwrap_or_default();
                    (path.to_owned(), r.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn section(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Section {
    let mut s = Section::default();
    for (name, value) in new {
        match old.get(name) {
            None => s.added.push(name.clone()),
            Some(before) if before == value => s.unchanged.push(name.clone()),
            Some(before) => s.changed.push(Change {
                name: name.clone(),
                keys: changed_keys(before, value),
                because: None,
            }),
        }
    }
    s.removed = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .cloned()
        .collect();
    s
}

/// The top-level keys of two objects whose values differ.
fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (old, new) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_are_added_removed_changed_by_key_or_unchanged() {
        let old = json!({
            "stores": {"a": {}, "gone": {}},
            "routes": [{"path": "/x", "store": "a"}],
            "processors": {"p": {"store": "a", "endpoint": "http://h/1", "retry_interval": "1s"}}
        });
        let new = json!({
            "stores": {"a": {}, "b": {"max_messages": 5}},
            "routes": [{"path": "/x", "store": "b"}, {"path": "/y", "store": "a"}],
            "processors": {"p": {"store": "a", "endpoint": "http://h/2"}}
        });
        let diff = Diff::between(&old, &new);
        assert_eq!(diff.stores.added, ["b"]);
        assert_eq!(diff.stores.removed, ["gone"]);
        assert_eq!(diff.stores.unchanged, ["a"]);
        assert_eq!(diff.routes.added, ["/y"]);
        assert_eq!(diff.routes.changed[0].keys, ["store"]);
        assert_eq!(
            diff.processors.changed[0].keys,
            ["endpoint", "retry_interval"]
        );
        assert!(!diff.is_empty());
        assert!(Diff::between(&new, &new).is_empty());
    }
}
