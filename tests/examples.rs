//! Every policy shipped in routes/ validates: operators copy these.

#[test]
fn shipped_policies_validate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/routes");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(errors) = switchyard::config::parse_policy(&text) {
                panic!("{} is invalid: {errors:#?}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the demo and the examples, found {checked}"
    );
}

/// `routes/prefix.example.toml` says it spells out every knob at its default: keep it true.
#[test]
fn the_prefix_example_shows_the_defaults() {
    let text = include_str!("../routes/prefix.example.toml");
    let policy = switchyard::config::parse_policy(text).expect("valid");
    assert_eq!(
        policy.routes[0].balance,
        switchyard::routing::Balance::Prefix(switchyard::routing::PrefixBalance::default())
    );
    assert_eq!(
        policy.server.scrape_interval,
        Some(std::time::Duration::from_millis(
            switchyard::config::policy::DEFAULT_SCRAPE_INTERVAL_MS
        ))
    );
}

/// `routes/cache.example.toml` caches per tenant with the lifetimes its comments give.
#[test]
fn the_cache_example_caches_per_tenant() {
    use switchyard::config::policy::{CacheRequests, CacheScope};
    let text = include_str!("../routes/cache.example.toml");
    let policy = switchyard::config::parse_policy(text).expect("valid");
    let cache = policy.routes[0].cache.as_ref().expect("the route caches");
    assert_eq!(cache.scope, CacheScope::ApiKey);
    assert_eq!(cache.requests, CacheRequests::Deterministic);
    assert_eq!((cache.ttl.as_secs(), cache.max_ttl.as_secs()), (300, 3600));
    assert_eq!(policy.cache.max_bytes, 256 * 1024 * 1024);
}

/// `routes/health.example.toml` says it shows the health fields at their defaults: keep it true.
#[test]
fn the_health_example_shows_the_defaults() {
    use switchyard::config::policy::*;
    let text = include_str!("../routes/health.example.toml");
    let policy = switchyard::config::parse_policy(text).expect("valid");
    assert_eq!(policy.outlier, OutlierPolicy::default());
    for backend in &policy.backends {
        let check = backend
            .health_check
            .as_ref()
            .expect("both backends are probed");
        assert_eq!(check.path, DEFAULT_HEALTH_PATH);
        assert_eq!(
            (
                check.interval.as_millis() as u64,
                check.timeout.as_millis() as u64,
                u64::from(check.rise),
                u64::from(check.fall)
            ),
            (
                DEFAULT_HEALTH_INTERVAL_MS,
                DEFAULT_HEALTH_TIMEOUT_MS,
                DEFAULT_HEALTH_RISE,
                DEFAULT_HEALTH_FALL
            )
        );
    }
}
