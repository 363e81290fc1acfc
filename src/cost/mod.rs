//! What requests cost: prices (`price`), and — built on them — spend, budgets and rate limits.

pub mod budget;
pub mod price;
pub mod spend;

pub use budget::{BudgetAction, BudgetSpec, RateLimitSpec, Scope, Window};
pub use price::cost_usd;
pub use spend::{Admitted, Refused, SpendLedger};
