//! Pure routing decisions over [`RequestFacts`] and a policy snapshot: which route, which arm,
//! which backend. No I/O, no clocks, no randomness of their own; the proxy supplies them.

pub mod arm;
pub mod backend;
pub mod facts;

pub use arm::{choose_arm, sticky_bucket, Arm, ArmTable, StickyKey, BUCKETS};
pub use backend::order_by_load;
pub use facts::{rewrite_model, Endpoint, FactsError, RequestFacts};
