//! The script of one SSE answer: which events, in which order, each due at
//! which offset from the start of generation, including the stream faults.
//! Pure, so the server only has to wait and write.

use std::time::Duration;

use super::model::Plan;

/// One SSE event the server writes, or the connection drop it performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Output token `index` (0-based).
    Token(u32),
    /// The `choices: []` chunk with `usage` (`stream_options.include_usage`).
    Usage,
    /// A vLLM-style `data: {"error": ...}` event on the 200 stream.
    Error,
    /// `data: [DONE]`.
    Done,
    /// Close the connection with no terminating chunk.
    Drop,
}

/// How a stream fails, and after how many regular events (tokens and usage).
///
/// A count at or beyond the stream's length fails it just before `[DONE]`,
/// so a configured fault always shows, whatever `max_tokens` a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFault {
    /// `--drop-after-events N`.
    DropAfter(u32),
    /// `--stream-error-after N`.
    ErrorAfter(u32),
}

impl StreamFault {
    fn after(self) -> u32 {
        match self {
            StreamFault::DropAfter(n) | StreamFault::ErrorAfter(n) => n,
        }
    }
}

/// Iterates `(due, event)`; `due` is measured from the start of generation.
#[derive(Clone, Debug)]
pub struct Script {
    plan: Plan,
    include_usage: bool,
    fault: Option<StreamFault>,
    emitted: u32,
    last_due: Duration,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Regular,
    /// Only `[DONE]` remains (after an error event).
    DoneNext,
    Finished,
}

impl Script {
    pub fn new(plan: Plan, include_usage: bool, fault: Option<StreamFault>) -> Self {
        Script {
            plan,
            include_usage,
            fault,
            emitted: 0,
            last_due: plan.ttft,
            phase: Phase::Regular,
        }
    }

    fn regular_events(&self) -> u32 {
        self.plan.completion_tokens + u32::from(self.include_usage)
    }
}

impl Iterator for Script {
    type Item = (Duration, Event);

    fn next(&mut self) -> Option<(Duration, Event)> {
        match self.phase {
            Phase::Finished => return None,
            Phase::DoneNext => {
                self.phase = Phase::Finished;
                return Some((self.last_due, Event::Done));
            }
            Phase::Regular => {}
        }
        let index = self.emitted;
        // Tokens are due on the plan's timeline; whatever follows the last
        // token (usage, error, drop, [DONE]) goes right after its predecessor.
        if index < self.plan.completion_tokens {
            self.last_due = self.plan.token_due(index);
        }
        let regular = self.regular_events();
        if let Some(fault) = self.fault.filter(|f| f.after().min(regular) == index) {
            self.fault = None;
            return Some(match fault {
                StreamFault::DropAfter(_) => {
                    self.phase = Phase::Finished;
                    (self.last_due, Event::Drop)
                }
                StreamFault::ErrorAfter(_) => {
                    self.phase = Phase::DoneNext;
                    (self.last_due, Event::Error)
                }
            });
        }
        let event = if index < self.plan.completion_tokens {
            Event::Token(index)
        } else if index < regular {
            Event::Usage
        } else {
            self.phase = Phase::Finished;
            return Some((self.last_due, Event::Done));
        };
        self.emitted += 1;
        Some((self.last_due, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::LatencyModel;

    const MS: Duration = Duration::from_millis(1);

    fn plan(tokens: u32) -> Plan {
        LatencyModel {
            ttft: 100 * MS,
            prefill_per_token: Duration::ZERO,
            tpot: 10 * MS,
        }
        .plan(8, 0, tokens)
    }

    fn events(script: Script) -> Vec<Event> {
        script.map(|(_, e)| e).collect()
    }

    #[test]
    fn regular_stream_is_tokens_usage_done_on_the_plan_timeline() {
        let script: Vec<_> = Script::new(plan(3), true, None).collect();
        assert_eq!(
            script,
            vec![
                (100 * MS, Event::Token(0)),
                (110 * MS, Event::Token(1)),
                (120 * MS, Event::Token(2)),
                (120 * MS, Event::Usage),
                (120 * MS, Event::Done),
            ]
        );
        assert_eq!(
            events(Script::new(plan(2), false, None)),
            vec![Event::Token(0), Event::Token(1), Event::Done]
        );
    }

    #[test]
    fn drop_after_n_events_ends_without_done() {
        let script: Vec<_> = Script::new(plan(5), false, Some(StreamFault::DropAfter(2))).collect();
        assert_eq!(
            script,
            vec![
                (100 * MS, Event::Token(0)),
                (110 * MS, Event::Token(1)),
                (120 * MS, Event::Drop)
            ]
        );
        assert_eq!(
            events(Script::new(plan(5), false, Some(StreamFault::DropAfter(0)))),
            vec![Event::Drop]
        );
    }

    #[test]
    fn error_after_n_events_then_done() {
        assert_eq!(
            events(Script::new(plan(5), true, Some(StreamFault::ErrorAfter(1)))),
            vec![Event::Token(0), Event::Error, Event::Done]
        );
    }

    #[test]
    fn fault_beyond_the_stream_fires_before_done() {
        assert_eq!(
            events(Script::new(
                plan(2),
                true,
                Some(StreamFault::DropAfter(100))
            )),
            vec![Event::Token(0), Event::Token(1), Event::Usage, Event::Drop]
        );
        let script: Vec<_> =
            Script::new(plan(2), false, Some(StreamFault::ErrorAfter(9))).collect();
        assert_eq!(
            script,
            vec![
                (100 * MS, Event::Token(0)),
                (110 * MS, Event::Token(1)),
                (110 * MS, Event::Error),
                (110 * MS, Event::Done)
            ]
        );
    }
}
