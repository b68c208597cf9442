//! The ledger suite (`ledger_suite/`) against the in-memory ledger.

#[macro_use]
mod ledger_suite;

use cloudkon_core::ledger::MemoryLedger;

async fn fresh() -> MemoryLedger {
    MemoryLedger::new()
}

async fn done(_: &MemoryLedger) {}

ledger_suite!(fresh(), done;);
