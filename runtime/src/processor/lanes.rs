//! Lanes: how a processor keeps order while it delivers several messages
//! at once.
//!
//! Every leased message goes into one lane; a lane delivers its messages one
//! at a time, in store order, and lanes run side by side (up to the
//! processor's `concurrency`). Which lane a message takes:
//!
//! - no `order_key`, `concurrency = 1`: one lane for all ([`Lane::All`]), the
//!   guide's strict store order;
//! - `order_key`: one lane per key, and one shared by the messages that have
//!   no key ([`Lane::Key`]);
//! - no `order_key`, `concurrency > 1`: each message alone ([`Lane::Alone`]),
//!   unordered.
//!
//! The lane whose next message is the oldest goes first. A lane whose key
//! failed for good with `on_failure = "deactivate"` is *blocked*: its
//! messages stay leased, in order, until the key is activated.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::config::OrderKey;
use crate::store::{Leased, Receipt};

/// The lane a message is delivered in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    All,
    /// The message's key; `None` for messages without one.
    Key(Option<String>),
    Alone(Receipt),
}

impl Lane {
    /// The lane of `leased` for a processor with `order_key` and `concurrency`.
    pub fn of(leased: &Leased, order_key: Option<&OrderKey>, concurrency: usize) -> Lane {
        match order_key {
            Some(key) => Lane::Key(key.of(&leased.message).filter(|k| !k.is_empty())),
            None if concurrency > 1 => Lane::Alone(leased.receipt),
            None => Lane::All,
        }
    }
}

/// Leased messages not finished yet, by lane (see the module doc).
#[derive(Debug, Default)]
pub struct Lanes {
    queues: HashMap<Lane, VecDeque<Leased>>,
    /// Lanes with a message to start, by that message's receipt.
    ready: BTreeMap<Receipt, Lane>,
    /// Lanes with a message being delivered (taken out of its queue).
    busy: HashSet<Lane>,
    blocked: HashSet<Lane>,
    /// Messages leased and not finished, the ones being delivered included.
    held: usize,
    /// Of them, the messages in blocked lanes.
    parked: usize,
}

impl Lanes {
    /// Adds a newly leased message at the back of its lane.
    pub fn push(&mut self, lane: Lane, leased: Leased) {
        self.held += 1;
        if self.blocked.contains(&lane) {
            self.parked += 1;
        }
        let queue = self.queues.entry(lane.clone()).or_default();
        if queue.is_empty() && !self.busy.contains(&lane) && !self.blocked.contains(&lane) {
            self.ready.insert(leased.receipt, lane);
        }
        queue.push_back(leased);
    }

    /// The next message to deliver: the oldest head of a lane that is
    /// neither busy nor blocked. Its lane is busy until [`Self::done`],
    /// [`Self::put_back`] or [`Self::block`].
    pub fn start(&mut self) -> Option<(Lane, Leased)> {
        let (_, lane) = self.ready.pop_first()?;
        let leased = self.queues.get_mut(&lane)?.pop_front()?;
        self.busy.insert(lane.clone());
        Some((lane, leased))
    }

    /// The message `start` gave left the store.
    pub fn done(&mut self, lane: Lane) {
        self.held -= 1;
        self.busy.remove(&lane);
        self.reopen(lane);
    }

    /// The message goes back to the head of its lane, not to be started
    /// again until the lane is released or activated (the processor stops).
    pub fn put_back(&mut self, lane: Lane, leased: Leased) {
        self.busy.remove(&lane);
        self.queues.entry(lane).or_default().push_front(leased);
    }

    /// The lane's head failed for good: the lane waits until activated.
    pub fn block(&mut self, lane: Lane, leased: Leased) {
        self.blocked.insert(lane.clone());
        self.put_back(lane.clone(), leased);
        self.parked += self.queues.get(&lane).map_or(0, VecDeque::len);
    }

    /// Lets blocked lanes go again: those `keep_blocked` says no to.
    pub fn unblock(&mut self, keep_blocked: impl Fn(&Lane) -> bool) {
        let freed: Vec<Lane> = self
            .blocked
            .iter()
            .filter(|lane| !keep_blocked(lane))
            .cloned()
            .collect();
        for lane in freed {
            self.blocked.remove(&lane);
            self.parked -= self.queues.get(&lane).map_or(0, VecDeque::len);
            self.reopen(lane);
        }
    }

    fn reopen(&mut self, lane: Lane) {
        if self.busy.contains(&lane) || self.blocked.contains(&lane) {
            return;
        }
        match self.queues.get(&lane).and_then(VecDeque::front) {
            Some(head) => {
                self.ready.insert(head.receipt, lane);
            }
            None => {
                self.queues.remove(&lane);
            }
        }
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Messages held that are not in a blocked lane.
    pub fn active(&self) -> usize {
        self.held - self.parked
    }

    pub fn blocked(&self) -> impl Iterator<Item = &Lane> {
        self.blocked.iter()
    }

    /// Whether a message could be started now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Empties every lane, for giving the messages back to the store; the
    /// oldest receipt among them (a release from there covers them all).
    /// Nothing may be busy.
    pub fn take_all(&mut self) -> Option<Receipt> {
        debug_assert!(self.busy.is_empty());
        let oldest = self
            .queues
            .values()
            .filter_map(VecDeque::front)
            .map(|l| l.receipt)
            .min();
        *self = Lanes::default();
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Message;

    fn leased(n: u64) -> Leased {
        Leased {
            receipt: Receipt(n),
            message: Message::new(
                http::Method::POST,
                "/".into(),
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            ),
        }
    }

    fn key(k: &str) -> Lane {
        Lane::Key(Some(k.into()))
    }

    #[test]
    fn a_lane_starts_its_next_message_only_after_the_one_before_is_done() {
        let mut lanes = Lanes::default();
        lanes.push(key("a"), leased(1));
        lanes.push(key("a"), leased(2));
        lanes.push(key("b"), leased(3));
        let (l1, m1) = lanes.start().unwrap();
        assert_eq!((l1.clone(), m1.receipt), (key("a"), Receipt(1)));
        let (l3, m3) = lanes.start().unwrap();
        assert_eq!((l3, m3.receipt), (key("b"), Receipt(3)));
        assert!(lanes.start().is_none(), "a's second waits for its first");
        lanes.done(l1);
        assert_eq!(lanes.start().unwrap().1.receipt, Receipt(2));
        assert_eq!(lanes.held(), 2);
    }

    #[test]
    fn a_blocked_lane_holds_only_its_own_messages_until_unblocked() {
        let mut lanes = Lanes::default();
        for (n, k) in [(1, "a"), (2, "b"), (3, "a"), (4, "b")] {
            lanes.push(key(k), leased(n));
        }
        let (a, m) = lanes.start().unwrap();
        lanes.block(a, m);
        let (b, m2) = lanes.start().unwrap();
        assert_eq!(m2.receipt, Receipt(2));
        lanes.done(b);
        let (b, m4) = lanes.start().unwrap();
        assert_eq!(m4.receipt, Receipt(4));
        lanes.done(b);
        assert!(lanes.start().is_none());
        lanes.push(key("a"), leased(5));
        assert_eq!((lanes.held(), lanes.active()), (3, 0));
        lanes.unblock(|_| false);
        assert_eq!(lanes.active(), 3);
        assert_eq!(lanes.start().unwrap().1.receipt, Receipt(1));
    }

    #[test]
    fn the_oldest_head_goes_first_and_take_all_returns_the_oldest_receipt() {
        let mut lanes = Lanes::default();
        lanes.push(key("b"), leased(5));
        lanes.push(key("a"), leased(7));
        lanes.push(Lane::Key(None), leased(6));
        assert_eq!(lanes.start().unwrap().1.receipt, Receipt(5));
        let (lane, m) = lanes.start().unwrap();
        assert_eq!(m.receipt, Receipt(6));
        lanes.put_back(lane, m);
        let (lane, m) = lanes.start().unwrap();
        lanes.put_back(lane, m);
        // The first one is still busy; give it back too, then take all.
        let mut lanes2 = Lanes::default();
        lanes2.push(key("x"), leased(9));
        lanes2.push(key("y"), leased(8));
        assert_eq!(lanes2.take_all(), Some(Receipt(8)));
        assert_eq!(lanes2.held(), 0);
    }
}
