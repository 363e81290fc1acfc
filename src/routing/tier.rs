//! Cost tiers: which tier a request starts from.
//!
//! The policy orders its tiers from cheapest to dearest (`tiers = ["economy", "standard",
//! "premium"]`). Each route has rules over the request's facts, first match wins, each naming
//! the tier to start from; a request matching none starts at the route's `default_tier`. The
//! candidate order (`candidates`) then tries that tier and the ones above it. Pure: no I/O.

use super::{ApiKeyHash, RequestFacts};

/// A request header the tier header (`x-switchyard-tier`) names, when a route lets clients
/// choose their tier.
pub const TIER_HEADER: http::HeaderName = http::HeaderName::from_static("x-switchyard-tier");

/// Conditions of one tier rule; every one given must hold. A rule with none always matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierCondition {
    /// The gateway's estimate of the prompt's tokens is at least this.
    pub prompt_tokens_at_least: Option<u64>,
    /// The estimate is below this.
    pub prompt_tokens_below: Option<u64>,
    /// The request asks for at least this many output tokens (`max_tokens`).
    pub max_tokens_at_least: Option<u64>,
    /// The request offers tools (true) or does not (false).
    pub tools: Option<bool>,
    /// `response_format` asks for JSON (true) or not (false).
    pub json_mode: Option<bool>,
    pub stream: Option<bool>,
    /// A request header has exactly this value (name lower-case).
    pub header: Option<(String, String)>,
    /// The client's API key belongs to this plan (see the policy's `[plans]`).
    pub plan: Option<String>,
}

/// One rule: when its condition holds, start from `tier` (an index into the policy's tiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRule {
    pub tier: usize,
    pub when: TierCondition,
}

/// A route's tier rules and how far its candidates may move from the chosen tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierPlan {
    pub rules: Vec<TierRule>,
    /// Index of the tier a request matching no rule starts from.
    pub default_tier: usize,
    /// Honour the client's `x-switchyard-tier` header (before the rules).
    pub allow_client_tier: bool,
    /// When every backend of the starting tier and above is saturated or failing, try the
    /// tiers below it too (dearer never happens silently the other way: overflow up is always on).
    pub overflow_down: bool,
}

impl std::fmt::Display for TierCondition {
    /// `prompt_tokens ≥ 2000, tools, plan = pro` — or `always` for a rule with no condition.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.prompt_tokens_at_least {
            parts.push(format!("prompt_tokens ≥ {n}"));
        }
        if let Some(n) = self.prompt_tokens_below {
            parts.push(format!("prompt_tokens < {n}"));
        }
        if let Some(n) = self.max_tokens_at_least {
            parts.push(format!("max_tokens ≥ {n}"));
        }
        for (name, value) in [
            ("tools", self.tools),
            ("json_mode", self.json_mode),
            ("stream", self.stream),
        ] {
            match value {
                Some(true) => parts.push(name.to_owned()),
                Some(false) => parts.push(format!("no {name}")),
                None => {}
            }
        }
        if let Some((name, value)) = &self.header {
            parts.push(format!("header {name} = {value:?}"));
        }
        if let Some(plan) = &self.plan {
            parts.push(format!("plan = {plan}"));
        }
        if parts.is_empty() {
            f.write_str("always")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl TierCondition {
    fn holds(&self, facts: &RequestFacts, headers: &http::HeaderMap, plan: Option<&str>) -> bool {
        let prompt = facts.prompt_tokens_estimate;
        self.prompt_tokens_at_least.is_none_or(|n| prompt >= n)
            && self.prompt_tokens_below.is_none_or(|n| prompt < n)
            && self
                .max_tokens_at_least
                .is_none_or(|n| facts.max_tokens.is_some_and(|m| m >= n))
            && self.tools.is_none_or(|t| facts.tools == t)
            && self.json_mode.is_none_or(|j| facts.json_mode == j)
            && self.stream.is_none_or(|s| facts.stream == s)
            && self.header.as_ref().is_none_or(|(name, value)| {
                headers
                    .get(name.as_str())
                    .is_some_and(|v| v.as_bytes() == value.as_bytes())
            })
            && self.plan.as_deref().is_none_or(|p| plan == Some(p))
    }
}

/// The tier a request starts from: the client's choice where the route allows it and the
/// header names a known tier, else the first rule that matches, else the route's default.
/// `tiers` are the policy's tier names in order; `plan` is the plan of the client's API key.
pub fn start_tier(
    plan_of_route: &TierPlan,
    tiers: &[String],
    facts: &RequestFacts,
    headers: &http::HeaderMap,
    plan: Option<&str>,
) -> usize {
    if plan_of_route.allow_client_tier {
        let asked = headers
            .get(TIER_HEADER)
            .and_then(|v| tiers.iter().position(|t| t.as_bytes() == v.as_bytes()));
        if let Some(tier) = asked {
            return tier;
        }
    }
    plan_of_route
        .rules
        .iter()
        .find(|r| r.when.holds(facts, headers, plan))
        .map_or(plan_of_route.default_tier, |r| r.tier)
}

/// The plan of the request's API key, from the policy's table of hashed keys.
pub fn plan_of(
    plans: &std::collections::HashMap<ApiKeyHash, String>,
    key: Option<ApiKeyHash>,
) -> Option<&str> {
    key.and_then(|k| plans.get(&k)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Endpoint;

    fn tiers() -> Vec<String> {
        ["economy", "standard", "premium"]
            .map(String::from)
            .to_vec()
    }

    fn facts(body: &str) -> RequestFacts {
        RequestFacts::parse(Endpoint::ChatCompletions, body.as_bytes()).unwrap()
    }

    fn plan() -> TierPlan {
        TierPlan {
            rules: vec![
                TierRule {
                    tier: 2,
                    when: TierCondition {
                        plan: Some("enterprise".into()),
                        ..TierCondition::default()
                    },
                },
                TierRule {
                    tier: 2,
                    when: TierCondition {
                        prompt_tokens_at_least: Some(1000),
                        ..TierCondition::default()
                    },
                },
                TierRule {
                    tier: 1,
                    when: TierCondition {
                        tools: Some(true),
                        ..TierCondition::default()
                    },
                },
                TierRule {
                    tier: 1,
                    when: TierCondition {
                        json_mode: Some(true),
                        stream: Some(false),
                        ..TierCondition::default()
                    },
                },
                TierRule {
                    tier: 1,
                    when: TierCondition {
                        header: Some(("x-team".into(), "research".into())),
                        max_tokens_at_least: Some(512),
                        ..TierCondition::default()
                    },
                },
            ],
            default_tier: 0,
            allow_client_tier: false,
            overflow_down: false,
        }
    }

    #[test]
    fn first_matching_rule_wins_over_the_default() {
        let none = http::HeaderMap::new();
        let long = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(4000)
        );
        let cases: &[(&str, Option<&str>, usize)] = &[
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                None,
                0,
            ),
            (&long, None, 2),
            (r#"{"model":"m","tools":[{"type":"function"}]}"#, None, 1),
            (
                r#"{"model":"m","response_format":{"type":"json_object"}}"#,
                None,
                1,
            ),
            (
                r#"{"model":"m","stream":true,"response_format":{"type":"json_object"}}"#,
                None,
                0,
            ),
            (r#"{"model":"m"}"#, Some("enterprise"), 2),
            (r#"{"model":"m"}"#, Some("free"), 0),
        ];
        for (body, plan_name, want) in cases {
            assert_eq!(
                start_tier(&plan(), &tiers(), &facts(body), &none, *plan_name),
                *want,
                "{body} plan {plan_name:?}"
            );
        }
    }

    #[test]
    fn header_rules_need_every_condition() {
        let mut h = http::HeaderMap::new();
        h.insert("x-team", "research".parse().unwrap());
        let small = facts(r#"{"model":"m","max_tokens":100}"#);
        let big = facts(r#"{"model":"m","max_tokens":600}"#);
        assert_eq!(start_tier(&plan(), &tiers(), &small, &h, None), 0);
        assert_eq!(start_tier(&plan(), &tiers(), &big, &h, None), 1);
        assert_eq!(
            start_tier(&plan(), &tiers(), &big, &http::HeaderMap::new(), None),
            0
        );
    }

    #[test]
    fn client_tier_only_where_allowed_and_known() {
        let mut h = http::HeaderMap::new();
        h.insert(TIER_HEADER, "premium".parse().unwrap());
        let f = facts(r#"{"model":"m"}"#);
        assert_eq!(start_tier(&plan(), &tiers(), &f, &h, None), 0);
        let allowing = TierPlan {
            allow_client_tier: true,
            ..plan()
        };
        assert_eq!(start_tier(&allowing, &tiers(), &f, &h, None), 2);
        h.insert(TIER_HEADER, "platinum".parse().unwrap());
        assert_eq!(start_tier(&allowing, &tiers(), &f, &h, None), 0);
    }

    #[test]
    fn plans_by_hashed_key() {
        let mut plans = std::collections::HashMap::new();
        plans.insert(ApiKeyHash::of(b"sk-1"), "enterprise".to_owned());
        assert_eq!(
            plan_of(&plans, Some(ApiKeyHash::of(b"sk-1"))),
            Some("enterprise")
        );
        assert_eq!(plan_of(&plans, Some(ApiKeyHash::of(b"sk-2"))), None);
        assert_eq!(plan_of(&plans, None), None);
    }
}
