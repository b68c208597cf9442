//! CloudKon's workers: the executors, the slot pool that runs tasks through them,
//! and the embedded engine (in-memory queue + pool) behind `cloudkon run`.

pub mod delay_proxy;
pub mod embedded;
pub mod exec;
pub mod logging;
pub mod loopback_http;
pub mod open_files;
pub mod pool;
pub mod remote;
pub mod serve;
pub mod signals;
pub mod spot;
pub mod termination;

pub use embedded::{EmbeddedConfig, EmbeddedError, Progress, run_embedded};
pub use exec::{AnimotoConfig, AnimotoExecutor, ExecLimits, ExecOutput, Executor, Registry};
pub use pool::{PoolConfig, PoolEvent, Shutdown, Ticket, UnitRun, WorkUnit, run_pool};
