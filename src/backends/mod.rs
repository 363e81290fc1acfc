//! Runtime state of the backends, shared by every policy snapshot that names them: load (requests
//! in flight). Decisions read it through plain views; nothing here does I/O.

pub mod load;

pub use load::{BackendLoad, InFlightGuard, LoadRegistry};
