//! The response cache: a repeated request answered by the gateway itself, faster than any
//! backend and at no GPU cost, never with a wrong, partial or cross-tenant answer.
//!
//! One concept per file: `key` (what may stand in for what), `eligibility` (whether a request
//! uses the cache at all), `memo` (keys of recently seen bodies), `plan` (both, for one request after its arm is chosen), `record`
//! (what an entry holds, recording and replay rules, the Redis wire form), `flight` (single
//! flight of identical misses), `store` (L1 moka, L2 Redis), `stats` (counts and metrics).

pub mod eligibility;
pub mod flight;
pub mod key;
pub mod memo;
pub mod plan;
pub mod record;
pub mod stats;
pub mod store;

pub use key::CacheKey;
pub use plan::{plan, Plan, SeenBody};
pub use record::{AnswerBody, CachedAnswer, HitHead, Recorder};
pub use stats::Layer;
pub use store::ResponseCache;
