//! kyu-core: the job model of kyu, with no I/O.
//!
//! Everything a storage backend, the worker runtime and the HTTP server must
//! agree on lives here: job states and the rules for leaving them
//! ([`state`], [`transition`], [`dependency`], [`claim`]), what a job looks
//! like on the wire ([`job`]), the bounds every input respects ([`validate`]),
//! how an enqueue request is validated ([`spec`]), how long to wait before a
//! retry ([`Backoff`]) and what time it is ([`Clock`]).
//!
//! ```
//! use kyu_core::{Clock, JobSpec};
//! let spec: JobSpec = serde_json::from_str(r#"{"queue":"mail","kind":"send","payload":{"to":"a@b.c"}}"#).unwrap();
//! let job = spec.validate(Clock::system().now(), &Default::default()).unwrap();
//! assert_eq!(job.queue.as_str(), "mail");
//! ```
#![warn(missing_docs)]

pub mod claim;
pub mod dependency;
pub mod flow;
pub mod job;
pub mod log;
pub mod retry;
pub mod schedule;
pub mod spec;
pub mod state;
pub mod tally;
pub mod time;
pub mod timeline;
pub mod transition;
pub mod validate;
pub mod wire;

pub use flow::Flow;
pub use job::{new_token, ClaimedJob, ErrorEntry, Job, JobId, QueueInfo, QueueName, RateLimit};
pub use retry::Backoff;
pub use schedule::{Schedule, ScheduleSpec};
pub use spec::{JobSpec, Limits, NewJob, ValidationError};
pub use state::JobState;
pub use time::{Clock, Millis};
