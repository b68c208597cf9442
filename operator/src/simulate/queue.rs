//! The simulated SQS queue and DynamoDB ledger rows: one message per bundle,
//! visible or in flight until a visibility timeout, redelivered at least once,
//! dead-lettered after `maxReceives`; and the bundle's claim (lease, attempt,
//! the progress its holder last wrote).

use std::collections::VecDeque;

/// Simulated time, in microseconds.
pub type T = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgState {
    Visible,
    InFlight,
    Deleted,
    DeadLettered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    Free,
    Held { worker: usize, until: T },
    Done,
}

/// A bundle: its message and its ledger row.
#[derive(Clone, Debug)]
pub struct Message {
    pub batch: usize,
    /// Its first task's position in the batch's send order (`id_at`).
    pub first: u64,
    pub len: u32,
    pub state: MsgState,
    pub receives: u32,
    /// Bumped by every receive or extension: a visibility timeout scheduled
    /// before it is stale.
    pub visibility: u32,
    pub claim: Claim,
    pub attempt: u32,
    /// Positions whose results were sent, as the holder last wrote them.
    pub progress: Vec<bool>,
}

/// The queue: messages, those visible in arrival order, and a count in flight.
#[derive(Debug, Default)]
pub struct Queue {
    pub messages: Vec<Message>,
    visible: VecDeque<usize>,
    pub in_flight: u64,
    pub dead_lettered: u64,
    /// Dead-lettered since the engine last looked (the operator reads them back).
    pub newly_dead: Vec<usize>,
}

impl Queue {
    pub fn add(&mut self, batch: usize, first: u64, len: u32) -> usize {
        self.messages.push(Message {
            batch,
            first,
            len,
            state: MsgState::InFlight,
            receives: 0,
            visibility: 0,
            claim: Claim::Free,
            attempt: 0,
            progress: Vec::new(),
        });
        self.in_flight += 1;
        self.messages.len() - 1
    }

    pub fn visible(&self) -> u64 {
        self.visible.len() as u64
    }

    /// The message is visible again (sent, given back, or its visibility
    /// ran out), or dead-lettered when it was received too often.
    /// Returns whether it is visible.
    pub fn make_visible(&mut self, id: usize, max_receives: u32) -> bool {
        let m = &mut self.messages[id];
        if m.state != MsgState::InFlight {
            return false;
        }
        self.in_flight -= 1;
        if max_receives > 0 && m.receives >= max_receives {
            m.state = MsgState::DeadLettered;
            self.dead_lettered += 1;
            self.newly_dead.push(id);
            return false;
        }
        m.state = MsgState::Visible;
        m.visibility += 1;
        self.visible.push_back(id);
        true
    }

    /// Receives up to `n` visible messages: in flight now.
    pub fn receive(&mut self, n: usize) -> Vec<usize> {
        let mut got = Vec::new();
        while got.len() < n {
            let Some(id) = self.visible.pop_front() else {
                break;
            };
            let m = &mut self.messages[id];
            m.state = MsgState::InFlight;
            m.receives += 1;
            m.visibility += 1;
            self.in_flight += 1;
            got.push(id);
        }
        got
    }

    pub fn delete(&mut self, id: usize) {
        let m = &mut self.messages[id];
        if m.state == MsgState::InFlight {
            self.in_flight -= 1;
        }
        if m.state == MsgState::Visible {
            self.visible.retain(|&v| v != id);
        }
        m.state = MsgState::Deleted;
        m.progress = Vec::new();
    }
}
