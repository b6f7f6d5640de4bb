//! The deliveries a broker store holds for its one consumer: received and
//! not yet leased (`ready`), or leased and not yet acked (`leased`), both in
//! queue order. Nothing here talks to a broker: `T` is what acks a delivery
//! (lapin's `Acker`, a STOMP ack id and its connection).

use std::collections::VecDeque;

use super::{Leased, Message, Receipt};

/// One delivery the broker has not been told the fate of.
pub(crate) struct Held<T> {
    pub receipt: u64,
    pub message: Message,
    pub ack: T,
}

/// Ready and leased deliveries, in order (see the module doc).
pub(crate) struct Holding<T> {
    ready: VecDeque<Held<T>>,
    leased: VecDeque<Held<T>>,
    next_receipt: u64,
}

impl<T> Default for Holding<T> {
    fn default() -> Holding<T> {
        Holding {
            ready: VecDeque::new(),
            leased: VecDeque::new(),
            next_receipt: 1,
        }
    }
}

impl<T> Holding<T> {
    /// A new delivery, behind every other.
    pub fn push(&mut self, message: Message, ack: T) {
        let receipt = self.next_receipt;
        self.next_receipt += 1;
        self.ready.push_back(Held {
            receipt,
            message,
            ack,
        });
    }

    pub fn nothing_ready(&self) -> bool {
        self.ready.is_empty()
    }

    /// Deliveries held, leased ones included.
    pub fn len(&self) -> usize {
        self.ready.len() + self.leased.len()
    }

    /// Up to `max` ready deliveries, from the front, now leased.
    pub fn lease(&mut self, max: usize) -> Vec<Leased> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(held) = self.ready.pop_front() else {
                break;
            };
            out.push(Leased {
                receipt: Receipt(held.receipt),
                message: held.message.clone(),
            });
            self.leased.push_back(held);
        }
        out
    }

    /// The leased deliveries of `receipts`, no longer held (those not held
    /// any more are left out: their connection went and the broker delivers
    /// them again).
    pub fn take(&mut self, receipts: &[Receipt]) -> Vec<Held<T>> {
        receipts
            .iter()
            .filter_map(|r| {
                let at = self.leased.iter().position(|h| h.receipt == r.0)?;
                self.leased.remove(at)
            })
            .collect()
    }

    /// If `receipts` are exactly the front of the leased deliveries, those,
    /// no longer held (one cumulative ack can cover them).
    pub fn take_front(&mut self, receipts: &[Receipt]) -> Option<Vec<Held<T>>> {
        let is_front = receipts.len() <= self.leased.len()
            && self
                .leased
                .iter()
                .zip(receipts)
                .all(|(held, r)| held.receipt == r.0);
        is_front.then(|| self.leased.drain(..receipts.len()).collect())
    }

    /// Puts `receipt` and every delivery leased after it back at the front, in order.
    pub fn release(&mut self, receipt: Receipt) {
        let at = self
            .leased
            .iter()
            .position(|h| h.receipt >= receipt.0)
            .unwrap_or(self.leased.len());
        let returned = self.leased.split_off(at);
        for held in returned.into_iter().rev() {
            self.ready.push_front(held);
        }
    }

    /// Forgets every delivery (the connection they came on is gone).
    pub fn clear(&mut self) {
        self.ready.clear();
        self.leased.clear();
    }

    /// The held messages, leased first, then ready, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.leased
            .iter()
            .chain(self.ready.iter())
            .map(|h| &h.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> Message {
        Message::new(
            http::Method::POST,
            format!("/{n}"),
            http::HeaderMap::new(),
            bytes::Bytes::new(),
        )
    }

    #[test]
    fn released_deliveries_come_back_first_in_order_and_acks_take_only_what_is_held() {
        let mut h = Holding::default();
        for n in 0..4 {
            h.push(message(n), n);
        }
        let first = h.lease(3);
        assert_eq!(first.len(), 3);
        assert_eq!(h.take(&[first[0].receipt]).len(), 1);
        h.release(first[1].receipt);
        let again = h.lease(10);
        let paths: Vec<&str> = again.iter().map(|l| l.message.path.as_str()).collect();
        assert_eq!(paths, ["/1", "/2", "/3"]);
        assert!(h.take_front(&[again[1].receipt]).is_none());
        assert_eq!(
            h.take_front(&[again[0].receipt, again[1].receipt])
                .unwrap()
                .len(),
            2
        );
        h.clear();
        assert_eq!(h.take(&[again[2].receipt]).len(), 0);
        assert_eq!(h.len(), 0);
    }
}
