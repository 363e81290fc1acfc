//! The policy: TOML as written (`raw`) → checked (`validate`) → [`Policy`] → a versioned
//! [`PolicySnapshot`] held by the [`PolicyStore`], which swaps, keeps history and rolls back.
//! `watch` reloads the policy file when it changes on disk.

pub mod policy;
pub mod raw;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod watch;

pub use policy::{BackendSpec, BackendTimeouts, Policy, RouteSpec, ServerSettings, ShadowSpec};
pub use snapshot::PolicySnapshot;
pub use store::{policy_diff, Applied, HistoryEntry, PolicySource, PolicyStore, RollbackError};
pub use validate::{parse_policy, FieldError};
