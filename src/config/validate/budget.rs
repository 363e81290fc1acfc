//! `[[budgets]]` and `[[rate_limits]]`: names, scopes, windows, limits and the routes they
//! cover. A `downgrade` budget needs tiers to downgrade to.

use std::collections::{HashMap, HashSet};

use super::Errors;
use crate::config::raw::RawPolicy;
use crate::cost::{BudgetAction, BudgetSpec, RateLimitSpec, Scope, Window};

pub(super) fn validate_budgets(
    raw: &RawPolicy,
    routes: &HashMap<&str, usize>,
    errors: &mut Errors,
) -> Vec<BudgetSpec> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.budgets.len());
    for (i, b) in raw.budgets.iter().enumerate() {
        let path = format!("budgets[{i}]");
        let before = errors.0.len();
        check_name(&path, &b.name, &mut names, errors);
        let scope = scope(&format!("{path}.scope"), &b.scope, true, errors);
        let window = match b.window.as_str() {
            "minute" => Some(Window::Minute),
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            "month" => Some(Window::Month),
            other => {
                errors.push(
                    format!("{path}.window"),
                    format!("`{other}` is not one of minute, hour, day, month"),
                );
                None
            }
        };
        if !b.limit_usd.is_finite() || b.limit_usd < 0.0 {
            errors.push(
                format!("{path}.limit_usd"),
                "must be a number of dollars, 0 or more",
            );
        }
        let action = match b.action.as_deref().unwrap_or("reject") {
            "reject" => Some(BudgetAction::Reject),
            "downgrade" => {
                if raw.tiers.len() < 2 {
                    errors.push(
                        format!("{path}.action"),
                        "`downgrade` serves from the cheapest tier: the policy needs at least two `tiers`",
                    );
                }
                Some(BudgetAction::Downgrade)
            }
            other => {
                errors.push(
                    format!("{path}.action"),
                    format!("`{other}` is not one of reject, downgrade"),
                );
                None
            }
        };
        let route_list = route_list(&path, b.routes.as_deref(), routes, errors);
        if let (Some(scope), Some(window), Some(action), true) =
            (scope, window, action, errors.0.len() == before)
        {
            out.push(BudgetSpec {
                name: b.name.clone(),
                scope,
                window,
                limit_usd: b.limit_usd,
                action,
                routes: route_list,
            });
        }
    }
    out
}

pub(super) fn validate_rate_limits(
    raw: &RawPolicy,
    routes: &HashMap<&str, usize>,
    errors: &mut Errors,
) -> Vec<RateLimitSpec> {
    // Budgets and rate limits share one namespace: both name counters in Redis and metrics.
    let mut names: HashSet<&str> = raw.budgets.iter().map(|b| b.name.as_str()).collect();
    let mut out = Vec::with_capacity(raw.rate_limits.len());
    for (i, r) in raw.rate_limits.iter().enumerate() {
        let path = format!("rate_limits[{i}]");
        let before = errors.0.len();
        check_name(&path, &r.name, &mut names, errors);
        let scope = scope(&format!("{path}.scope"), &r.scope, false, errors);
        if r.requests_per_minute.is_none() && r.tokens_per_minute.is_none() {
            errors.push(
                path.clone(),
                "set requests_per_minute, tokens_per_minute or both",
            );
        }
        for (field, value) in [
            ("requests_per_minute", r.requests_per_minute),
            ("tokens_per_minute", r.tokens_per_minute),
        ] {
            if value == Some(0) {
                errors.push(format!("{path}.{field}"), "must be greater than 0");
            }
        }
        let route_list = route_list(&path, r.routes.as_deref(), routes, errors);
        if let (Some(scope), true) = (scope, errors.0.len() == before) {
            out.push(RateLimitSpec {
                name: r.name.clone(),
                scope,
                requests_per_minute: r.requests_per_minute,
                tokens_per_minute: r.tokens_per_minute,
                routes: route_list,
            });
        }
    }
    out
}

fn check_name<'a>(path: &str, name: &'a str, names: &mut HashSet<&'a str>, errors: &mut Errors) {
    // The name is part of Redis keys and metric labels: keep it plain.
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        errors.push(
            format!("{path}.name"),
            "must be 1–64 characters of letters, digits, `-`, `_` or `.`",
        );
    } else if !names.insert(name) {
        errors.push(
            format!("{path}.name"),
            format!("duplicate budget or rate limit name `{name}`"),
        );
    }
}

fn scope(path: &str, text: &str, route_allowed: bool, errors: &mut Errors) -> Option<Scope> {
    match text {
        "api-key" => Some(Scope::ApiKey),
        "route" if route_allowed => Some(Scope::Route),
        _ => match text.strip_prefix("header:") {
            Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                Some(Scope::Header(name.to_ascii_lowercase()))
            }
            _ => {
                let allowed = if route_allowed {
                    "api-key, header:NAME or route"
                } else {
                    "api-key or header:NAME"
                };
                errors.push(path, format!("`{text}` is not one of {allowed}"));
                None
            }
        },
    }
}

fn route_list(
    path: &str,
    names: Option<&[String]>,
    routes: &HashMap<&str, usize>,
    errors: &mut Errors,
) -> Vec<usize> {
    let Some(names) = names else {
        return Vec::new();
    };
    if names.is_empty() {
        errors.push(
            format!("{path}.routes"),
            "must list at least one route (leave it out for every route)",
        );
    }
    names
        .iter()
        .enumerate()
        .filter_map(|(j, n)| {
            let found = routes.get(n.as_str()).copied();
            if found.is_none() {
                errors.push(
                    format!("{path}.routes[{j}]"),
                    format!("unknown route `{n}`"),
                );
            }
            found
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::parse_policy;
    use crate::cost::{BudgetAction, Scope, Window};

    const BASE: &str = r#"
        tiers = ["economy", "premium"]
        [[backends]]
        name = "a"
        url = "http://127.0.0.1:9101"
        tier = "economy"
        [[routes]]
        name = "chat"
        models = ["m"]
        [[routes.arms]]
        name = "x"
        backends = ["a"]
        weight = 100
    "#;

    #[test]
    fn budgets_and_rate_limits_parse() {
        let policy = parse_policy(&format!(
            r#"{BASE}
            [[budgets]]
            name = "team-daily"
            scope = "header:X-Team-Id"
            window = "day"
            limit_usd = 25.5
            action = "downgrade"
            routes = ["chat"]
            [[budgets]]
            name = "route-monthly"
            scope = "route"
            window = "month"
            limit_usd = 1000
            [[rate_limits]]
            name = "per-key"
            scope = "api-key"
            requests_per_minute = 60
            "#
        ))
        .expect("valid");
        assert_eq!(policy.budgets.len(), 2);
        let b = &policy.budgets[0];
        assert_eq!(b.scope, Scope::Header("x-team-id".into()));
        assert_eq!(
            (b.window, b.action, b.routes.as_slice()),
            (Window::Day, BudgetAction::Downgrade, &[0][..])
        );
        assert_eq!(policy.budgets[1].action, BudgetAction::Reject);
        assert!(policy.budgets[1].routes.is_empty());
        assert_eq!(policy.rate_limits[0].requests_per_minute, Some(60));
        assert_eq!(policy.rate_limits[0].tokens_per_minute, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = parse_policy(&format!(
            r#"{BASE}
            [[budgets]]
            name = "a b"
            scope = "cookie"
            window = "week"
            limit_usd = -1
            action = "shout"
            routes = ["nope"]
            [[rate_limits]]
            name = "r"
            scope = "route"
            [[rate_limits]]
            name = "r"
            scope = "api-key"
            tokens_per_minute = 0
            "#
        ))
        .unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "budgets[0].name",
                "budgets[0].scope",
                "budgets[0].window",
                "budgets[0].limit_usd",
                "budgets[0].action",
                "budgets[0].routes[0]",
                "rate_limits[0].scope",
                "rate_limits[0]",
                "rate_limits[1].name",
                "rate_limits[1].tokens_per_minute",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn downgrade_needs_tiers() {
        let base = BASE.replace("tiers = [\"economy\", \"premium\"]", "");
        let base = base.replace("tier = \"economy\"", "");
        let errors = parse_policy(&format!(
            "{base}\n[[budgets]]\nname = \"d\"\nscope = \"api-key\"\nwindow = \"day\"\nlimit_usd = 1\naction = \"downgrade\"\n"
        ))
        .unwrap_err();
        assert_eq!(errors[0].path, "budgets[0].action", "{errors:?}");
    }
}
