//! Raw policy → validated [`Policy`], collecting every problem with its field path
//! (`routes[2].arms[1].weight: must be between 0 and 100`) rather than stopping at the first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use super::policy::*;
use super::raw::RawPolicy;

mod backend;
mod balance;
mod budget;
mod cache;
mod cost;
mod guardrails;
mod health;
mod redis;
mod route;
mod server;
mod shadow;

/// One problem in a policy, at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Default)]
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Parses and validates a policy from its TOML text.
pub fn parse_policy(text: &str) -> Result<Policy, Vec<FieldError>> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| vec![toml_error(&e)])?;
    validate(&raw)
}

fn toml_error(e: &toml::de::Error) -> FieldError {
    let path = match e.span() {
        Some(span) => format!("toml (byte {})", span.start),
        None => "toml".to_owned(),
    };
    FieldError {
        path,
        message: e.message().to_owned(),
    }
}

/// Checks every field and cross-reference of `raw`.
pub fn validate(raw: &RawPolicy) -> Result<Policy, Vec<FieldError>> {
    let mut errors = Errors::default();
    let server = server::validate_server(raw, &mut errors);
    let cache = cache::validate_cache(raw.cache.as_ref(), &mut errors);
    let guardrails = guardrails::validate_settings(raw, &mut errors);
    let tiers = cost::validate_tiers(raw, &mut errors);
    let plans = cost::validate_plans(raw.plans.as_ref(), &mut errors);
    let outlier = health::validate_outlier(raw.outlier.as_ref(), &mut errors);

    let mut backend_index = HashMap::new();
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (i, b) in raw.backends.iter().enumerate() {
        let path = format!("backends[{i}]");
        if backend_index.insert(b.name.as_str(), i).is_some() {
            errors.push(
                format!("{path}.name"),
                format!("duplicate backend name `{}`", b.name),
            );
        }
        if let Some(spec) = backend::validate_backend(&path, b, &tiers, &mut errors) {
            backends.push(spec);
        }
    }

    if raw.routes.is_empty() {
        errors.push("routes", "at least one route is required");
    }
    // First declaration wins, so a duplicate name is reported once, below.
    let mut route_index: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        route_index.entry(r.name.as_str()).or_insert(i);
    }
    let mut route_names = HashSet::new();
    let mut served_by: HashMap<&str, &str> = HashMap::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if r.name.is_empty() {
            errors.push(format!("{path}.name"), "must not be empty");
        } else if !route_names.insert(r.name.as_str()) {
            errors.push(
                format!("{path}.name"),
                format!("duplicate route name `{}`", r.name),
            );
        }
        if r.models.is_empty() {
            errors.push(
                format!("{path}.models"),
                "must list at least one model name",
            );
        }
        for (j, m) in r.models.iter().enumerate() {
            if m.is_empty() {
                errors.push(format!("{path}.models[{j}]"), "must not be empty");
            } else if let Some(other) = served_by.insert(m, &r.name) {
                errors.push(
                    format!("{path}.models[{j}]"),
                    format!("model `{m}` is already served by route `{other}`"),
                );
            }
        }
        let tiering = cost::validate_tiering(&path, r, &tiers, &mut errors);
        let retry = cost::validate_retry(&format!("{path}.retry"), r.retry.as_ref(), &mut errors);
        let fallback_routes =
            cost::validate_fallbacks(&path, i, &r.fallback_routes, &route_index, &mut errors);
        if let Some(mut route) = route::validate_route(
            &path,
            r,
            &backend_index,
            guardrails.windows.span,
            &mut errors,
        ) {
            route.tiering = tiering;
            route.retry = retry;
            route.fallback_routes = fallback_routes;
            routes.push(route);
        }
    }

    let redis = raw
        .redis
        .as_ref()
        .and_then(|r| redis::validate_redis(r, &mut errors));
    let route_index: HashMap<&str, usize> = raw
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    let budgets = budget::validate_budgets(raw, &route_index, &mut errors);
    let rate_limits = budget::validate_rate_limits(raw, &route_index, &mut errors);

    if errors.0.is_empty() {
        Ok(Policy {
            server,
            tiers,
            plans,
            backends,
            routes,
            cache,
            guardrails,
            redis,
            budgets,
            rate_limits,
            outlier,
        })
    } else {
        Err(errors.0)
    }
}

pub(super) fn socket_addr(path: &str, text: &str, errors: &mut Errors) -> SocketAddr {
    text.parse().unwrap_or_else(|_| {
        errors.push(
            path,
            format!("`{text}` is not an address like 127.0.0.1:8080"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

pub(super) fn positive(path: &str, value: Option<u64>, default: u64, errors: &mut Errors) -> u64 {
    match value {
        Some(0) => {
            errors.push(path, "must be greater than 0");
            default
        }
        Some(v) => v,
        None => default,
    }
}

/// [`positive`], and at most `max`: a larger value is an error naming the bound.
pub(super) fn positive_at_most(
    path: &str,
    value: Option<u64>,
    default: u64,
    max: u64,
    errors: &mut Errors,
) -> u64 {
    let v = positive(path, value, default, errors);
    if v > max {
        errors.push(path, format!("must be at most {max}"));
    }
    v
}

/// Weight in percent with at most two decimals → basis points.
pub(super) fn weight_bp(w: f64) -> Option<u32> {
    if !w.is_finite() || !(0.0..=100.0).contains(&w) {
        return None;
    }
    let bp = (w * 100.0).round();
    ((w * 100.0 - bp).abs() < 1e-6).then_some(bp as u32)
}

/// A running process cannot move its sockets or threads: a new policy that changes them is
/// refused rather than half-applied.
pub fn check_swap(running: &Policy, next: &Policy) -> Result<(), Vec<FieldError>> {
    let (running_cache, next_cache) = (&running.cache, &next.cache);
    let (running, next) = (&running.server, &next.server);
    let mut errors = Errors::default();
    let restart = "cannot change while running; restart switchyard to apply it";
    if running.listen != next.listen {
        errors.push("server.listen", restart);
    }
    if running.admin_listen != next.admin_listen {
        errors.push("server.admin_listen", restart);
    }
    if running.threads != next.threads {
        errors.push("server.threads", restart);
    }
    // The in-process cache is sized once; resizing it would mean dropping every entry.
    if running_cache.max_bytes != next_cache.max_bytes {
        errors.push("cache.max_bytes", restart);
    }
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(errors.0)
    }
}

/// The windows are cut once at start-up: a new policy that changes their shape is refused.
pub fn check_windows_swap(
    running: &GuardrailSettings,
    next: &GuardrailSettings,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Errors::default();
    let restart = "cannot change while running; restart switchyard to apply it";
    if running.windows.slice != next.windows.slice {
        errors.push("guardrails.slice", restart);
    }
    if running.windows.span != next.windows.span {
        errors.push("guardrails.span", restart);
    }
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(errors.0)
    }
}

/// The errors a policy is refused with, as the operator reads them.
#[cfg(test)]
pub(crate) fn errors_of(text: &str) -> Vec<String> {
    parse_policy(text)
        .expect_err("must be rejected")
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Asserts that each of `expected` begins one of `errors`.
#[cfg(test)]
pub(crate) fn assert_errors(errors: &[String], expected: &[&str]) {
    for e in expected {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
}

/// The smallest valid policy body (one backend, one route, one arm), for tests of a section
/// that is appended to it.
#[cfg(test)]
pub(crate) const ONE_ROUTE: &str = r#"
        [[backends]]
        name = "a"
        url = "http://127.0.0.1:9101"
        [[routes]]
        name = "chat"
        models = ["m"]
        [[routes.arms]]
        name = "x"
        backends = ["a"]
        weight = 100
    "#;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        admin_listen = "127.0.0.1:9090"
        [[backends]]
        name = "a"
        url = "http://127.0.0.1:9101"
        model = "m-internal"
        [[backends]]
        name = "b"
        url = "http://localhost:9102"
        [[routes]]
        name = "chat"
        models = ["m"]
        sticky = "header:x-user-id"
          [[routes.arms]]
          name = "champion"
          backends = ["a"]
          weight = 94.75
          [[routes.arms]]
          name = "canary"
          backends = ["b", "a"]
          weight = 5.25
    "#;

    #[test]
    fn good_policy_validates() {
        let p = parse_policy(GOOD).expect("valid");
        assert_eq!(p.backends.len(), 2);
        assert_eq!(p.backends[1].authority, "localhost:9102");
        let arms = p.routes[0].arms.arms();
        assert_eq!(arms[0].buckets, 0..9475);
        assert_eq!(arms[1].backends, vec![1, 0]);
        assert_eq!(p.routes[0].salt, "chat");
        assert_eq!(p.server.max_body_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn every_error_is_collected_with_its_path() {
        let bad = GOOD
            .replace("weight = 5.25", "weight = 5.251")
            .replace(r#"backends = ["b", "a"]"#, r#"backends = ["b", "zz"]"#)
            .replace("http://localhost:9102", "ftp://localhost:9102")
            .replace(r#"name = "b""#, r#"name = "a""#)
            .replace("header:x-user-id", "cookie");
        let errs = errors_of(&bad);
        let expect = [
            "backends[1].name: duplicate backend name `a`",
            "backends[1].url: scheme `ftp` is not supported",
            "routes[0].sticky: `cookie` is not one of",
            "routes[0].arms[1].weight: 5.251 must be a percentage",
            "routes[0].arms[1].backends[0]: unknown backend `b`",
            "routes[0].arms[1].backends[1]: unknown backend `zz`",
            "routes[0].arms: weights sum to 94.75, they must sum to 100",
        ];
        assert_errors(&errs, &expect);
    }

    #[test]
    fn unknown_fields_and_syntax_are_rejected() {
        let errs = errors_of(&GOOD.replace("sticky =", "stiky ="));
        assert!(errs[0].contains("unknown field `stiky`"), "{errs:?}");
        assert!(errors_of("[[routes]\n").len() == 1);
    }

    #[test]
    fn limits_and_sockets() {
        let errs = errors_of(
            &GOOD
                .replace("127.0.0.1:9090", "127.0.0.1:8080")
                .replace("[server]", "[server]\nmax_body_bytes = 0"),
        );
        assert!(errs
            .iter()
            .any(|e| e.starts_with("server.admin_listen: must differ")));
        assert!(errs
            .iter()
            .any(|e| e == "server.max_body_bytes: must be greater than 0"));
        assert!(errors_of("routes = []")
            .iter()
            .any(|e| e.starts_with("routes:")));
    }

    #[test]
    fn duplicate_models_across_routes() {
        let text = format!(
            "{GOOD}\n[[routes]]\nname = \"other\"\nmodels = [\"m\"]\n[[routes.arms]]\nname = \"x\"\nbackends = [\"a\"]\nweight = 100\n"
        );
        assert!(errors_of(&text)
            .iter()
            .any(|e| e == "routes[1].models[0]: model `m` is already served by route `chat`"));
    }

    const BLUE_GREEN: &str = r#"
        [[backends]]
        name = "v1"
        url = "http://127.0.0.1:9101"
        [[backends]]
        name = "v2"
        url = "http://127.0.0.1:9102"
        [[routes]]
        name = "chat"
        models = ["m"]
        active = "blue"
        allow_arm_override = true
          [[routes.arms]]
          name = "blue"
          set = "blue"
          backends = ["v1"]
          weight = 100
          [[routes.arms]]
          name = "green"
          set = "green"
          backends = ["v2"]
          weight = 95
          [[routes.arms]]
          name = "green-canary"
          set = "green"
          backends = ["v1"]
          weight = 5
          [routes.shadow]
          backend = "v2"
          percent = 12.5
    "#;

    #[test]
    fn blue_green_sets_and_shadow() {
        let p = parse_policy(BLUE_GREEN).expect("valid");
        let r = &p.routes[0];
        assert_eq!(r.active_set.as_deref(), Some("blue"));
        assert!(r.allow_arm_override);
        let active: Vec<bool> = r.arms.arms().iter().map(|a| a.active).collect();
        assert_eq!(active, vec![true, false, false]);
        let shadow = r.shadow.as_ref().unwrap();
        assert_eq!(
            (shadow.backend, shadow.percent_bp, shadow.max_inflight),
            (1, 1250, 32)
        );
        assert!(shadow.mirror_streaming);
        let green =
            parse_policy(&BLUE_GREEN.replace("active = \"blue\"", "active = \"green\"")).unwrap();
        let active: Vec<bool> = green.routes[0]
            .arms
            .arms()
            .iter()
            .map(|a| a.active)
            .collect();
        assert_eq!(active, vec![false, true, true]);
    }

    #[test]
    fn blue_green_and_shadow_errors() {
        let errs = errors_of(
            &BLUE_GREEN
                .replace("active = \"blue\"", "active = \"purple\"")
                .replace("weight = 5\n", "weight = 6\n")
                .replace(
                    "backend = \"v2\"\n          percent = 12.5",
                    "backend = \"v9\"\n          percent = 101",
                ),
        );
        assert_errors(
            &errs,
            &[
                "routes[0].active: no arm belongs to set `purple`",
                "routes[0].arms: weights of set `green` sum to 101, they must sum to 100",
                "routes[0].shadow.backend: unknown backend `v9`",
                "routes[0].shadow.percent: 101 must be a percentage",
            ],
        );
        let errs = errors_of(&BLUE_GREEN.replace(
            "percent = 12.5",
            "percent = 12.5\n          sample_file = \"/no/such/dir/pairs.jsonl\"\n          sample_max_bytes = 10",
        ));
        assert!(
            errs.iter().any(|e| e.starts_with(
                "routes[0].shadow.sample_file: `/no/such/dir/pairs.jsonl` is not a file path"
            )),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e == "routes[0].shadow.sample_max_bytes: must be at least 4096"),
            "{errs:?}"
        );
        let errs = errors_of(&BLUE_GREEN.replace("active = \"blue\"", ""));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[0].active: arms name a `set`")),
            "{errs:?}"
        );
    }

    #[test]
    fn swap_refuses_socket_changes() {
        let a = parse_policy(GOOD).unwrap();
        let mut b = a.clone();
        b.server.listen = "127.0.0.1:1".parse().unwrap();
        b.server.max_body_bytes = 1;
        let errs = check_swap(&a, &b).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "server.listen");
    }
}
