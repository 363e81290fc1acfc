//! Runtime state of the backends, shared by every policy snapshot that names them: load (requests
//! in flight, scraped figures) and the prefix index. Decisions read them through plain views;
//! only the scraper does I/O, in the background.

pub mod load;
pub mod prefix_index;
pub mod scrape;

pub use load::{BackendLoad, InFlightGuard, LoadRegistry};
pub use prefix_index::{backend_id, BackendId, PrefixIndex};
pub use scrape::{BackendScraper, ScrapeRecord};
