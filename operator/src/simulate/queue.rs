//! The simulated SQS queue and DynamoDB ledger rows: one message per bundle,
//! visible or in flight until a visibility timeout, redelivered at least once,
//! dead-lettered after `maxReceives`; and the bundle's claim (lease, attempt,
//! the progress its holder last wrote). Bundles go to the main queue or to
//! its priority lane, which a receive looks at first (see `queue::Lanes`).

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
    /// Sent to the priority lane.
    pub priority: bool,
}

/// The queue: messages, those visible in arrival order, and a count in flight.
#[derive(Debug, Default)]
pub struct Queue {
    pub messages: Vec<Message>,
    visible: VecDeque<usize>,
    /// The priority lane's visible messages.
    visible_priority: VecDeque<usize>,
    pub in_flight: u64,
    pub dead_lettered: u64,
    /// Dead-lettered since the engine last looked (the operator reads them back).
    pub newly_dead: Vec<usize>,
}

impl Queue {
    pub fn add(&mut self, batch: usize, first: u64, len: u32, priority: bool) -> usize {
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
            priority,
        });
        self.in_flight += 1;
        self.messages.len() - 1
    }

    /// Visible in both lanes.
    pub fn visible(&self) -> u64 {
        (self.visible.len() + self.visible_priority.len()) as u64
    }

    /// Visible in the main queue: what the pool's reconciler reads.
    pub fn visible_main(&self) -> u64 {
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
        if m.priority {
            self.visible_priority.push_back(id);
        } else {
            self.visible.push_back(id);
        }
        true
    }

    /// A worker's receive of up to `n` messages, as `queue::Lanes` makes
    /// it: when it `look`s at the priority lane, from there if it has any,
    /// else from the main queue (`Lanes::receive_main`); in flight now.
    /// Also the requests it took (an empty lane looked at costs one).
    pub fn receive(&mut self, n: usize, look: bool) -> (Vec<usize>, u64) {
        if !look {
            (self.receive_from(n, false), 1)
        } else if self.visible_priority.is_empty() {
            (self.receive_from(n, false), 2)
        } else {
            (self.receive_from(n, true), 1)
        }
    }

    /// A look at the priority lane alone (`Lanes::receive_priority`): one
    /// request.
    pub fn receive_priority(&mut self, n: usize) -> Vec<usize> {
        self.receive_from(n, true)
    }

    /// A long poll of the main queue returning with what became visible there.
    pub fn receive_main(&mut self, n: usize) -> Vec<usize> {
        self.receive_from(n, false)
    }

    fn receive_from(&mut self, n: usize, priority: bool) -> Vec<usize> {
        let mut got = Vec::new();
        while got.len() < n {
            let lane = if priority {
                &mut self.visible_priority
            } else {
                &mut self.visible
            };
            let Some(id) = lane.pop_front() else {
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

    /// Up to `max` bundles visible in the priority lane go to the back of
    /// the main queue (the pool reconciler's `move_visible_to`: each a new
    /// message there, received by none yet); how many.
    pub fn move_lane_to_main(&mut self, max: usize) -> usize {
        let mut moved = 0;
        while moved < max {
            let Some(id) = self.visible_priority.pop_front() else {
                break;
            };
            let m = &mut self.messages[id];
            m.priority = false;
            m.receives = 0;
            m.visibility += 1;
            self.visible.push_back(id);
            moved += 1;
        }
        moved
    }

    pub fn delete(&mut self, id: usize) {
        let m = &mut self.messages[id];
        if m.state == MsgState::InFlight {
            self.in_flight -= 1;
        }
        if m.state == MsgState::Visible {
            self.visible.retain(|&v| v != id);
            self.visible_priority.retain(|&v| v != id);
        }
        m.state = MsgState::Deleted;
        m.progress = Vec::new();
    }
}
