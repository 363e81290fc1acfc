//! The evaluator: every `[guardrails] interval`, judge every rule on every watched arm, keep
//! the consecutive-failure streaks, step rollouts, and turn what is due into changes.
//!
//! [`evaluate`] is the decision — a pure function of the policy, the window data it is shown,
//! the state carried between evaluations and the time. [`GuardrailRuntime`] is the I/O around
//! it: it reads the live windows, applies the changes as new policy versions (sourced
//! `guardrail` or `rollout`, with their reason) by editing the running policy's TOML, and
//! serves the operator's rollout commands.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::rollout::{
    advance, edit_route, fmt_weight, weights_for, EditError, RolloutPhase, RolloutState,
};
use super::rules::{fmt_window, judge, step_streak, GuardrailAction, Judgement, Verdict};
use super::window::{SliceData, Windows};
use crate::config::{Policy, PolicySource, PolicyStore, RouteSpec};

/// The window data the evaluator is shown: one arm of one route, all its backends merged.
pub trait WindowSource {
    fn arm(&self, route: &str, arm: &str, window: Duration) -> SliceData;
}

/// The live windows at one instant.
pub struct LiveWindows<'a> {
    pub windows: &'a Windows,
    pub now_ms: u64,
}

impl WindowSource for LiveWindows<'_> {
    fn arm(&self, route: &str, arm: &str, window: Duration) -> SliceData {
        self.windows.arm_window(route, arm, self.now_ms, window)
    }
}

/// The last verdict of one rule on one arm, for `/admin/guardrails`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleStatus {
    pub route: String,
    pub rule: String,
    pub arm: String,
    pub action: GuardrailAction,
    pub judgement: Judgement,
    /// Failing evaluations in a row.
    pub streak: u32,
    pub consecutive: u32,
}

/// What an evaluation decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Log and count.
    Alert {
        route: String,
        rule: String,
        arm: String,
        detail: String,
    },
    /// Take `arm` of route `route` out (weight to the champion, or the active set back to the
    /// champion's).
    Rollback {
        route: usize,
        arm: usize,
        rule: String,
        reason: String,
    },
    /// Hold the route's rollout.
    Pause {
        route: usize,
        rule: String,
        reason: String,
    },
    /// Move the rollout's arm to `weight_bp`.
    Step {
        route: usize,
        arm: usize,
        weight_bp: u32,
        reason: String,
    },
}

/// What the evaluator carries from one evaluation to the next.
#[derive(Debug, Default)]
pub struct EvaluatorState {
    /// Consecutive failing evaluations per (route, rule, arm).
    streaks: HashMap<(String, String, String), u32>,
    /// Rollout state per route name.
    pub rollouts: BTreeMap<String, RolloutState>,
    /// Every rule's last verdict per arm.
    pub statuses: Vec<RuleStatus>,
}

/// Whether the arm takes traffic now (an arm without traffic cannot be rolled back further).
fn takes_traffic(route: &RouteSpec, arm: usize) -> bool {
    let a = &route.arms.arms()[arm];
    a.active && a.weight_bp > 0
}

/// One evaluation at `now_ms`: judges every rule, updates `state`, returns what is due.
pub fn evaluate(
    policy: &Policy,
    source: &dyn WindowSource,
    state: &mut EvaluatorState,
    now_ms: u64,
) -> Vec<Change> {
    let mut changes = Vec::new();
    state.statuses.clear();
    for (ri, route) in policy.routes.iter().enumerate() {
        let arms = route.arms.arms();
        let champion = route.champion;
        sync_rollout(route, state, now_ms);
        let mut rolled_back = Vec::new();
        let mut paused = false;
        // Verdicts of each rule on the rollout's arm: the rollout advances on them.
        let mut on_rollout_arm: Vec<Option<Judgement>> = vec![None; route.guardrails.len()];
        for (gi, rule) in route.guardrails.iter().enumerate() {
            let watched: Vec<usize> = match &rule.arm {
                Some(name) => route.arms.position(name).into_iter().collect(),
                None => (0..arms.len()).filter(|i| *i != champion).collect(),
            };
            for ai in watched {
                let arm = &arms[ai].name;
                let data = source.arm(&route.name, arm, rule.window);
                let champion_data = (ai != champion)
                    .then(|| source.arm(&route.name, &arms[champion].name, rule.window));
                let j = judge(
                    rule,
                    arm,
                    &data,
                    champion_data
                        .as_ref()
                        .map(|d| (arms[champion].name.as_str(), d)),
                );
                let key = (route.name.clone(), rule.name.clone(), arm.clone());
                let streak = state.streaks.entry(key).or_default();
                let due = step_streak(streak, &j.verdict, rule.consecutive);
                if due {
                    // Acting restarts the count: the next action needs `consecutive` new failures.
                    *streak = 0;
                    let reason = format!("guardrail {}: {}", rule.name, j.detail);
                    match rule.action {
                        GuardrailAction::Rollback
                            if ai != champion
                                && takes_traffic(route, ai)
                                && !rolled_back.contains(&ai) =>
                        {
                            rolled_back.push(ai);
                            changes.push(Change::Rollback {
                                route: ri,
                                arm: ai,
                                rule: rule.name.clone(),
                                reason,
                            });
                        }
                        GuardrailAction::Pause
                            if !paused
                                && state
                                    .rollouts
                                    .get(&route.name)
                                    .is_some_and(|r| r.phase == RolloutPhase::Running) =>
                        {
                            paused = true;
                            changes.push(Change::Pause {
                                route: ri,
                                rule: rule.name.clone(),
                                reason,
                            });
                        }
                        GuardrailAction::Rollback | GuardrailAction::Pause => {}
                        GuardrailAction::Alert => changes.push(Change::Alert {
                            route: route.name.clone(),
                            rule: rule.name.clone(),
                            arm: arm.clone(),
                            detail: j.detail.clone(),
                        }),
                    }
                }
                if route.rollout.as_ref().is_some_and(|r| r.arm == ai) {
                    on_rollout_arm[gi] = Some(j.clone());
                }
                state.statuses.push(RuleStatus {
                    route: route.name.clone(),
                    rule: rule.name.clone(),
                    arm: arm.clone(),
                    action: rule.action,
                    judgement: j,
                    streak: *state
                        .streaks
                        .get(&(route.name.clone(), rule.name.clone(), arm.clone()))
                        .unwrap_or(&0),
                    consecutive: rule.consecutive,
                });
            }
        }
        let (Some(spec), Some(ro)) = (&route.rollout, state.rollouts.get_mut(&route.name)) else {
            continue;
        };
        if rolled_back.contains(&spec.arm) {
            ro.phase = RolloutPhase::RolledBack;
            ro.note = "rolled back by a guardrail".to_owned();
            continue;
        }
        if paused {
            ro.phase = RolloutPhase::Paused;
            ro.note = "paused by a guardrail".to_owned();
            continue;
        }
        let waiting: Vec<String> = spec
            .require
            .iter()
            .filter_map(|&gi| {
                let name = &route.guardrails[gi].name;
                match &on_rollout_arm[gi] {
                    Some(j) if j.verdict == Verdict::Pass => None,
                    Some(j) => Some(format!("{name} {}", j.verdict)),
                    None => Some(format!("{name} not judged")),
                }
            })
            .collect();
        let Some(target) = advance(spec, ro, now_ms, waiting.is_empty()) else {
            if ro.phase == RolloutPhase::Running {
                ro.note = if waiting.is_empty() {
                    "baking".to_owned()
                } else {
                    format!("waiting: {}", waiting.join(", "))
                };
            }
            continue;
        };
        let arm = &arms[spec.arm].name;
        let from = fmt_weight(ro.weight_bp);
        let to = fmt_weight(target);
        let reason = if ro.weight_bp < spec.steps_bp[0] {
            format!("rollout {arm} started: {from}% → {to}%")
        } else {
            let passed: Vec<String> = spec
                .require
                .iter()
                .filter_map(|&gi| on_rollout_arm[gi].as_ref())
                .map(|j| j.detail.clone())
                .collect();
            format!(
                "rollout {arm} {from}% → {to}%{} after {} at {from}%{}{}",
                if target >= 10_000 { " (complete)" } else { "" },
                fmt_window(Duration::from_millis(now_ms.saturating_sub(ro.since_ms))),
                if passed.is_empty() { "" } else { "; " },
                passed.join("; ")
            )
        };
        changes.push(Change::Step {
            route: ri,
            arm: spec.arm,
            weight_bp: target,
            reason,
        });
    }
    let live: Vec<&str> = policy
        .routes
        .iter()
        .filter(|r| r.rollout.is_some())
        .map(|r| r.name.as_str())
        .collect();
    state
        .rollouts
        .retain(|name, _| live.contains(&name.as_str()));
    changes
}

/// Brings the route's rollout state in line with the running policy: a new or changed
/// `[routes.rollout]` starts afresh; a weight that moved (a step applied, an operator's push)
/// restarts the bake time.
fn sync_rollout(route: &RouteSpec, state: &mut EvaluatorState, now_ms: u64) {
    let Some(spec) = &route.rollout else {
        return;
    };
    let weight = route.arms.arms()[spec.arm].weight_bp;
    let ro = state
        .rollouts
        .entry(route.name.clone())
        .or_insert_with(|| RolloutState::new(spec, weight, now_ms));
    if &ro.spec != spec {
        *ro = RolloutState::new(spec, weight, now_ms);
    }
    if ro.weight_bp != weight {
        ro.weight_bp = weight;
        ro.since_ms = now_ms;
    }
    if weight >= 10_000 && ro.phase == RolloutPhase::Running {
        ro.phase = RolloutPhase::Completed;
        ro.note = "the arm takes all traffic".to_owned();
    }
}

/// An operator's rollout verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCommand {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl RolloutCommand {
    pub fn parse(text: &str) -> Option<RolloutCommand> {
        Some(match text {
            "pause" => RolloutCommand::Pause,
            "resume" => RolloutCommand::Resume,
            "promote" => RolloutCommand::Promote,
            "abort" => RolloutCommand::Abort,
            _ => return None,
        })
    }
}

/// Why an operator's rollout command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("route `{0}` has no [routes.rollout]")]
    NoRollout(String),
    #[error("the rollout of route `{route}` is {phase}; {verb} does not apply")]
    WrongPhase {
        route: String,
        phase: &'static str,
        verb: &'static str,
    },
    #[error("the policy could not be edited: {0}")]
    Edit(#[from] EditError),
    #[error("the edited policy was refused: {0}")]
    Refused(String),
}

/// The evaluator's state and the policy it acts on: shared by the background task and the
/// admin API's rollout verbs, which serialise on the state's lock.
pub struct GuardrailRuntime {
    store: Arc<PolicyStore>,
    state: Mutex<EvaluatorState>,
}

impl GuardrailRuntime {
    pub fn new(store: Arc<PolicyStore>) -> GuardrailRuntime {
        GuardrailRuntime {
            store,
            state: Mutex::new(EvaluatorState::default()),
        }
    }

    /// One evaluation on the live windows, its changes applied. Returns the changes.
    pub fn tick(&self) -> Vec<Change> {
        let metrics = self.store.metrics().clone();
        let now_ms = metrics.clock.now_ms();
        let snapshot = self.store.current();
        let mut state = self.state.lock();
        let source = LiveWindows {
            windows: &metrics.windows,
            now_ms,
        };
        let changes = evaluate(&snapshot.policy, &source, &mut state, now_ms);
        for change in &changes {
            if let Err(e) = self.apply(change, &snapshot.policy, &mut state) {
                tracing::error!(error = %e, ?change, "guardrail change not applied");
            }
        }
        changes
    }

    fn apply(
        &self,
        change: &Change,
        policy: &Policy,
        state: &mut EvaluatorState,
    ) -> Result<(), CommandError> {
        let metrics = self.store.metrics();
        match change {
            Change::Alert {
                route,
                rule,
                arm,
                detail,
            } => {
                tracing::warn!(route, rule, arm, "guardrail alert: {detail}");
                metrics.record_guardrail(route, rule, arm, "alert");
                Ok(())
            }
            Change::Pause {
                route,
                rule,
                reason,
            } => {
                let name = &policy.routes[*route].name;
                tracing::warn!(route = %name, rule, "rollout paused: {reason}");
                metrics.record_guardrail(name, rule, "", "pause");
                Ok(())
            }
            Change::Rollback {
                route,
                arm,
                rule,
                reason,
            } => {
                let r = &policy.routes[*route];
                let arm_name = &r.arms.arms()[*arm].name;
                metrics.record_guardrail(&r.name, rule, arm_name, "rollback");
                tracing::warn!(route = %r.name, arm = %arm_name, "guardrail rollback: {reason}");
                self.take_out(r, *arm, PolicySource::Guardrail, reason)
            }
            Change::Step {
                route,
                arm,
                weight_bp,
                reason,
            } => {
                let r = &policy.routes[*route];
                tracing::info!(route = %r.name, "{reason}");
                self.set_weight(r, *arm, *weight_bp, reason)?;
                if let Some(ro) = state.rollouts.get_mut(&r.name) {
                    if *weight_bp >= 10_000 {
                        ro.phase = RolloutPhase::Completed;
                        ro.note = "the arm takes all traffic".to_owned();
                    }
                }
                Ok(())
            }
        }
    }

    /// Takes `arm` out of `route`: blue-green flips the active set back to the champion's; a
    /// weighted arm's weight goes to the champion.
    fn take_out(
        &self,
        route: &RouteSpec,
        arm: usize,
        source: PolicySource,
        reason: &str,
    ) -> Result<(), CommandError> {
        let arms = route.arms.arms();
        let champion = &arms[route.champion];
        let failing = &arms[arm];
        let text = self.store.current().source.clone();
        let (edited, suffix) = match (&champion.set, &failing.set) {
            (Some(cs), Some(fs)) if cs != fs => (
                edit_route(&text, &route.name, &[], Some(cs))?,
                format!("; active set {fs} → {cs}"),
            ),
            _ => (
                edit_route(
                    &text,
                    &route.name,
                    &[
                        (failing.name.as_str(), 0),
                        (
                            champion.name.as_str(),
                            champion.weight_bp + failing.weight_bp,
                        ),
                    ],
                    None,
                )?,
                format!(
                    "; {} {}% → 0%, {} {}% → {}%",
                    failing.name,
                    fmt_weight(failing.weight_bp),
                    champion.name,
                    fmt_weight(champion.weight_bp),
                    fmt_weight(champion.weight_bp + failing.weight_bp)
                ),
            ),
        };
        self.store
            .apply(&edited, source, &format!("{reason}{suffix}"))
            .map(|_| ())
            .map_err(|errors| {
                CommandError::Refused(
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })
    }

    fn set_weight(
        &self,
        route: &RouteSpec,
        arm: usize,
        weight_bp: u32,
        reason: &str,
    ) -> Result<(), CommandError> {
        let arms = route.arms.arms();
        let weights = weights_for(arms, route.champion, arm, weight_bp)
            .ok_or_else(|| EditError::NoRoom(route.name.clone()))?;
        let named: Vec<(&str, u32)> = weights
            .iter()
            .map(|(i, w)| (arms[*i].name.as_str(), *w))
            .collect();
        let text = self.store.current().source.clone();
        let edited = edit_route(&text, &route.name, &named, None)?;
        self.store
            .apply(&edited, PolicySource::Rollout, reason)
            .map(|_| ())
            .map_err(|errors| {
                CommandError::Refused(
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })
    }

    /// An operator's verb on a route's rollout. Returns the rollout's phase afterwards.
    pub fn command(
        &self,
        route_name: &str,
        cmd: RolloutCommand,
    ) -> Result<&'static str, CommandError> {
        let snapshot = self.store.current();
        let now_ms = self.store.metrics().clock.now_ms();
        let mut state = self.state.lock();
        let route = snapshot
            .policy
            .routes
            .iter()
            .find(|r| r.name == route_name)
            .filter(|r| r.rollout.is_some())
            .ok_or_else(|| CommandError::NoRollout(route_name.to_owned()))?;
        let spec = route.rollout.as_ref().expect("filtered on rollout");
        sync_rollout(route, &mut state, now_ms);
        let ro = state
            .rollouts
            .get_mut(route_name)
            .expect("sync_rollout made it");
        let arm = &route.arms.arms()[spec.arm];
        let wrong = |phase: RolloutPhase, verb| CommandError::WrongPhase {
            route: route_name.to_owned(),
            phase: phase.as_str(),
            verb,
        };
        match cmd {
            RolloutCommand::Pause => {
                if ro.phase != RolloutPhase::Running {
                    return Err(wrong(ro.phase, "pause"));
                }
                ro.phase = RolloutPhase::Paused;
                ro.note = "paused by an operator".to_owned();
            }
            RolloutCommand::Resume => {
                if ro.phase == RolloutPhase::Running || ro.phase == RolloutPhase::Completed {
                    return Err(wrong(ro.phase, "resume"));
                }
                ro.phase = RolloutPhase::Running;
                ro.since_ms = now_ms;
                ro.note = "resumed by an operator".to_owned();
            }
            RolloutCommand::Promote => {
                if ro.phase == RolloutPhase::Completed {
                    return Err(wrong(ro.phase, "promote"));
                }
                let reason = format!(
                    "rollout {} promoted by an operator: {}% → 100%",
                    arm.name,
                    fmt_weight(arm.weight_bp)
                );
                self.set_weight(route, spec.arm, 10_000, &reason)?;
                ro.phase = RolloutPhase::Completed;
                ro.note = "promoted by an operator".to_owned();
            }
            RolloutCommand::Abort => {
                if matches!(ro.phase, RolloutPhase::Aborted | RolloutPhase::RolledBack) {
                    return Err(wrong(ro.phase, "abort"));
                }
                let reason = format!("rollout {} aborted by an operator", arm.name);
                self.take_out(route, spec.arm, PolicySource::Rollout, &reason)?;
                ro.phase = RolloutPhase::Aborted;
                ro.note = "aborted by an operator".to_owned();
            }
        }
        Ok(ro.phase.as_str())
    }

    /// The running policy's evaluation interval.
    pub fn interval(&self) -> Duration {
        self.store.current().policy.guardrails.interval
    }

    /// Rule verdicts and rollout states as of the last evaluation.
    pub fn report(&self) -> (Vec<RuleStatus>, Vec<(String, RolloutState)>) {
        let state = self.state.lock();
        (
            state.statuses.clone(),
            state
                .rollouts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

/// The background task: one evaluation per interval (re-read from the running policy each
/// time, so a push can change the pace).
pub struct GuardrailTask {
    pub runtime: Arc<GuardrailRuntime>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for GuardrailTask {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.runtime.interval()) => {
                    let runtime = self.runtime.clone();
                    // Applying a change validates a policy (which may resolve host names): off
                    // the async workers.
                    let _ = tokio::task::spawn_blocking(move || runtime.tick()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_policy;
    use crate::guardrails::window::{OutcomeClass, RequestFigures};

    /// Window data by arm name; every window length sees the same data.
    struct Fixed(HashMap<String, SliceData>);

    impl WindowSource for Fixed {
        fn arm(&self, _route: &str, arm: &str, _window: Duration) -> SliceData {
            self.0.get(arm).cloned().unwrap_or_default()
        }
    }

    fn ttft(n: usize, ms: u64) -> SliceData {
        let mut d = SliceData::default();
        for _ in 0..n {
            d.record(&RequestFigures {
                outcome: OutcomeClass::Success,
                latency: Duration::from_millis(ms * 2),
                ttfb: None,
                ttft: Some(Duration::from_millis(ms)),
                inter_token: &[],
                output_tokens: None,
                cost_usd: None,
                fallback: false,
                content_filter: false,
                refusal: false,
            });
        }
        d
    }

    fn policy(canary_weight: u32, extra: &str) -> Policy {
        parse_policy(&format!(
            r#"
            [[backends]]
            name = "a"
            url = "http://127.0.0.1:9101"
            [[routes]]
            name = "chat"
            models = ["m"]
              [[routes.arms]]
              name = "champion"
              backends = ["a"]
              weight = {}
              [[routes.arms]]
              name = "canary"
              backends = ["a"]
              weight = {canary_weight}
              [[routes.guardrails]]
              name = "ttft"
              metric = "ttft"
              quantile = "p95"
              window = "60s"
              max_ratio = 1.2
              min_requests = 20
              consecutive = 2
              action = "rollback"
            {extra}
            "#,
            100 - canary_weight
        ))
        .expect("valid")
    }

    fn source(champion: SliceData, canary: SliceData) -> Fixed {
        Fixed(HashMap::from([
            ("champion".to_owned(), champion),
            ("canary".to_owned(), canary),
        ]))
    }

    #[test]
    fn a_slow_canary_is_rolled_back_after_consecutive_failures() {
        let p = policy(10, "");
        let src = source(ttft(400, 100), ttft(40, 400));
        let mut state = EvaluatorState::default();
        assert_eq!(evaluate(&p, &src, &mut state, 0), vec![]);
        assert_eq!(state.statuses[0].streak, 1);
        let changes = evaluate(&p, &src, &mut state, 1000);
        let [Change::Rollback {
            route: 0,
            arm: 1,
            reason,
            ..
        }] = changes.as_slice()
        else {
            panic!("{changes:?}");
        };
        assert_eq!(
            reason,
            "guardrail ttft: canary ttft p95 0.4 s > 1.2 × champion 0.1 s over 60 s, 40 vs 400 requests"
        );
        // An arm already at 0 % is not rolled back again.
        let p0 = policy(0, "");
        let mut state = EvaluatorState::default();
        evaluate(&p0, &src, &mut state, 0);
        assert_eq!(evaluate(&p0, &src, &mut state, 1000), vec![]);
    }

    #[test]
    fn low_volume_is_never_acted_on() {
        let p = policy(10, "");
        let src = source(ttft(400, 100), ttft(5, 900));
        let mut state = EvaluatorState::default();
        for t in 0..10 {
            assert_eq!(evaluate(&p, &src, &mut state, t * 1000), vec![]);
        }
        assert_eq!(state.statuses[0].judgement.verdict, Verdict::Inconclusive);
    }

    const ROLLOUT: &str = r#"
              [routes.rollout]
              arm = "canary"
              steps = [10, 50, 100]
              bake = "10s"
    "#;

    #[test]
    fn a_rollout_steps_when_baked_and_passing_and_stops_when_rolled_back() {
        let healthy = source(ttft(400, 100), ttft(40, 100));
        let mut state = EvaluatorState::default();
        // At 0 % the rollout starts at once.
        let changes = evaluate(&policy(0, ROLLOUT), &healthy, &mut state, 0);
        assert!(
            matches!(&changes[..], [Change::Step { weight_bp: 1000, reason, .. }] if reason == "rollout canary started: 0% → 10%"),
            "{changes:?}"
        );
        // At 10 %: baking for 10 s from when the weight was first seen.
        let p10 = policy(10, ROLLOUT);
        assert_eq!(evaluate(&p10, &healthy, &mut state, 1_000), vec![]);
        assert_eq!(evaluate(&p10, &healthy, &mut state, 9_000), vec![]);
        let changes = evaluate(&p10, &healthy, &mut state, 11_000);
        let [Change::Step {
            weight_bp: 5000,
            reason,
            ..
        }] = changes.as_slice()
        else {
            panic!("{changes:?}");
        };
        assert!(
            reason.starts_with("rollout canary 10% → 50% after 10 s at 10%; canary ttft p95"),
            "{reason}"
        );
        // Too little volume: inconclusive, so no advance.
        let quiet = source(ttft(400, 100), ttft(3, 100));
        let p50 = policy(50, ROLLOUT);
        assert_eq!(evaluate(&p50, &quiet, &mut state, 12_000), vec![]);
        assert_eq!(evaluate(&p50, &quiet, &mut state, 40_000), vec![]);
        assert_eq!(state.rollouts["chat"].note, "waiting: ttft inconclusive");
        // A failing canary is rolled back and the rollout stops.
        let slow = source(ttft(400, 100), ttft(40, 400));
        evaluate(&p50, &slow, &mut state, 41_000);
        let changes = evaluate(&p50, &slow, &mut state, 42_000);
        assert!(
            matches!(&changes[..], [Change::Rollback { .. }]),
            "{changes:?}"
        );
        assert_eq!(state.rollouts["chat"].phase, RolloutPhase::RolledBack);
        assert_eq!(
            evaluate(&policy(0, ROLLOUT), &healthy, &mut state, 99_000),
            vec![]
        );
    }
}
