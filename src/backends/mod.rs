//! Runtime state of the backends, shared by every policy snapshot that names them: load (requests
//! in flight, scraped figures), the prefix index, and health (active checks, passive ejection).
//! Decisions read them through plain views; only the scraper and the health checker do I/O, in
//! the background.

mod clock;
pub mod health;
pub mod health_check;
pub mod load;
pub mod prefix_index;
pub mod scrape;

pub use health::{BackendHealth, HealthState};
pub use health_check::HealthChecker;
pub use load::{BackendLoad, InFlightGuard, LoadRegistry};
pub use prefix_index::{backend_id, BackendId, PrefixIndex};
pub use scrape::{BackendScraper, ScrapeRecord};
