//! What requests cost: prices (`price`), and — built on them — spend, budgets and rate limits.

pub mod price;

pub use price::cost_usd;
