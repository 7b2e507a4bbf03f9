//! weir's core: the task model, its state machine, input validation, limits and
//! retry backoff. Pure logic: no tokio, no sockets, no disk, no clock reads (time
//! and randomness are passed in), so every rule here is unit- and property-tested.

pub mod backoff;
pub mod flow;
pub mod group;
pub mod id;
pub mod json;
pub mod limits;
pub mod machine;
pub mod task;
pub mod trace;
pub mod validate;

pub use backoff::Backoff;
pub use flow::{ConfigPatch, QueueConfig};
pub use group::{GroupState, GroupTally};
pub use id::TaskId;
pub use limits::Limits;
pub use task::{NewTask, TaskRecord, TaskState};
pub use trace::TraceContext;
