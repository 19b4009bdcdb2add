//! What a resource's actor does next about the resource's run, decided from
//! plain data: no actors, no cluster, no clock. The actor gathers a
//! [`Situation`], does the [`Action`] [`decide`] returns, and asks again
//! whenever something changes (the run, the leadership, a step's end, a
//! proposal's answer, a retry's timer).

use crate::domain::resources::RunRecord;

use super::MAX_ATTEMPTS;

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Situation<'a> {
    /// The term this node leads, if it leads.
    pub leader_term: Option<u64>,
    /// This node.
    pub node_id: u64,
    /// The last log index when this process started its engine.
    pub boot_index: u64,
    /// The resource's run in flight (running), as applied.
    pub run: Option<&'a RunRecord>,
    /// What this process executes for the resource, if anything.
    pub executing: Option<Executing>,
    /// This process's proposal to take a run over (or to give it up), if any.
    pub takeover: Option<Proposal>,
}

/// The attempt this process executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Executing {
    /// The run's index.
    pub run: u64,
    /// The attempt.
    pub attempt: u32,
    /// How far it got.
    pub stage: Stage,
}

/// How far an executed attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The provider's step runs.
    Stepping {
        /// Its cancellation has fired (a user's cancel or its timeout).
        cancelled: bool,
    },
    /// The step ended; its finish is being recorded.
    Finishing(Pending),
}

/// A proposal about one attempt of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proposal {
    /// The run's index.
    pub run: u64,
    /// The attempt it is about (for a takeover: the attempt taken over).
    pub attempt: u32,
    /// Where it is.
    pub pending: Pending,
}

/// Where a proposal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// To be proposed (first, or again now that its retry delay passed).
    Ready,
    /// Proposed, not answered yet.
    InFlight,
    /// The cluster could not commit it; proposed again after a delay.
    Retrying,
    /// Answered (committed or refused): the applied state moves on from here.
    Answered,
}

/// What the actor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing, until something changes.
    Wait,
    /// Stop executing without finishing the run: this node no longer leads,
    /// the run ended, or it changed hands. Then decide again.
    Abandon,
    /// Start the run's step: this very process was given the run.
    Execute,
    /// This process was given a run cancelled before its attempt began:
    /// finish it as cancelled without running the step.
    FinishCancelled,
    /// Propose the ended step's finish (the first time, or again).
    ProposeFinish,
    /// A user asked to cancel the run: fire the running step's cancellation.
    CancelStep,
    /// Take over a run given to another node or an earlier process.
    TakeOver {
        /// The attempt this node makes.
        attempt: u32,
    },
    /// End the run as interrupted: it had [`MAX_ATTEMPTS`] attempts.
    GiveUp,
}

/// Decides what the actor does next.
///
/// Only the leader drives runs. It executes a run given to this very process:
/// by an entry of the term it leads now, appended after this process started
/// (a restarted leader may lead the same term again; the runs it was given
/// before the restart are taken over, not executed: no process runs them any
/// more). Any other run is taken over at the next attempt, or ended
/// interrupted once it had its attempts.
pub(crate) fn decide(s: &Situation<'_>) -> Action {
    let (Some(term), Some(run)) = (s.leader_term, s.run) else {
        return match s.executing {
            Some(_) => Action::Abandon,
            None => Action::Wait,
        };
    };
    if let Some(ex) = s.executing {
        if (ex.run, ex.attempt) != (run.index, run.attempt) {
            return Action::Abandon;
        }
        return match ex.stage {
            Stage::Stepping { cancelled: false } if run.cancel_requested => Action::CancelStep,
            Stage::Stepping { .. } => Action::Wait,
            Stage::Finishing(Pending::Ready) => Action::ProposeFinish,
            Stage::Finishing(_) => Action::Wait,
        };
    }
    if run.node_id == s.node_id && run.term == term && run.since > s.boot_index {
        return if run.cancel_requested {
            Action::FinishCancelled
        } else {
            Action::Execute
        };
    }
    match s.takeover {
        Some(p) if (p.run, p.attempt) == (run.index, run.attempt) && p.pending != Pending::Ready => Action::Wait,
        _ if run.attempt >= MAX_ATTEMPTS => Action::GiveUp,
        _ => Action::TakeOver {
            attempt: run.attempt + 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::resources::RunOutcome;
    use crate::domain::Trigger;

    const ME: u64 = 1;
    const OTHER: u64 = 2;
    const TERM: u64 = 7;
    const BOOT: u64 = 100;

    /// A running run at index 150, attempt 1, given to this node in this
    /// term after this process started.
    fn run() -> RunRecord {
        RunRecord {
            index: 150,
            kind: "image".into(),
            name: "web".into(),
            event: "create".into(),
            from: String::new(),
            to: "building".into(),
            outcome: RunOutcome::Running,
            attempt: 1,
            node_id: ME,
            term: TERM,
            since: 150,
            args: Default::default(),
            trigger: Trigger {
                principal: "ops".into(),
                reason: String::new(),
                source: "api".into(),
                at_ms: 0,
            },
            finished_at_ms: None,
            error: String::new(),
            outputs_json: String::new(),
            cancel_requested: false,
        }
    }

    fn leading(run: &RunRecord) -> Situation<'_> {
        Situation {
            leader_term: Some(TERM),
            node_id: ME,
            boot_index: BOOT,
            run: Some(run),
            executing: None,
            takeover: None,
        }
    }

    fn stepping(run: &RunRecord, cancelled: bool) -> Option<Executing> {
        Some(Executing {
            run: run.index,
            attempt: run.attempt,
            stage: Stage::Stepping { cancelled },
        })
    }

    fn finishing(run: &RunRecord, pending: Pending) -> Option<Executing> {
        Some(Executing {
            run: run.index,
            attempt: run.attempt,
            stage: Stage::Finishing(pending),
        })
    }

    fn takeover(run: &RunRecord, pending: Pending) -> Option<Proposal> {
        Some(Proposal {
            run: run.index,
            attempt: run.attempt,
            pending,
        })
    }

    #[test]
    fn the_leader_executes_a_run_it_was_given_in_this_process() {
        let r = run();
        assert_eq!(decide(&leading(&r)), Action::Execute);
    }

    #[test]
    fn a_run_cancelled_before_its_attempt_began_is_finished_as_cancelled() {
        let r = RunRecord {
            cancel_requested: true,
            ..run()
        };
        assert_eq!(decide(&leading(&r)), Action::FinishCancelled);
    }

    #[test]
    fn a_follower_does_nothing() {
        let r = run();
        let s = Situation {
            leader_term: None,
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::Wait);
    }

    #[test]
    fn nothing_to_do_without_a_run() {
        let s = Situation {
            run: None,
            ..leading(&run())
        };
        assert_eq!(decide(&s), Action::Wait);
    }

    #[test]
    fn a_node_that_lost_the_leadership_abandons_its_step() {
        let r = run();
        let s = Situation {
            leader_term: None,
            executing: stepping(&r, false),
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::Abandon);
        // Abandoning is for steps and finishes alike.
        let s = Situation {
            executing: finishing(&r, Pending::Retrying),
            ..s
        };
        assert_eq!(decide(&s), Action::Abandon);
    }

    #[test]
    fn a_step_whose_run_ended_is_abandoned() {
        let r = run();
        let s = Situation {
            run: None,
            executing: stepping(&r, false),
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::Abandon);
    }

    #[test]
    fn a_step_of_another_attempt_or_run_is_abandoned_then_the_run_is_driven() {
        let old = run();
        // A new leader took the run over (attempt 2) while this node executed attempt 1.
        let r = RunRecord {
            attempt: 2,
            node_id: OTHER,
            term: TERM,
            since: 160,
            ..run()
        };
        let s = Situation {
            executing: stepping(&old, false),
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::Abandon);
        // Once abandoned, the decision is made afresh.
        let s = Situation { executing: None, ..s };
        assert_eq!(decide(&s), Action::TakeOver { attempt: 3 });
        // A different run of the same resource.
        let next = RunRecord {
            index: 170,
            since: 170,
            ..run()
        };
        let s = Situation {
            executing: stepping(&old, false),
            ..leading(&next)
        };
        assert_eq!(decide(&s), Action::Abandon);
    }

    #[test]
    fn a_running_step_is_left_alone() {
        let r = run();
        let s = Situation {
            executing: stepping(&r, false),
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::Wait);
    }

    #[test]
    fn a_users_cancel_cancels_the_running_step_once() {
        let r = RunRecord {
            cancel_requested: true,
            ..run()
        };
        let s = Situation {
            executing: stepping(&r, false),
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::CancelStep);
        let s = Situation {
            executing: stepping(&r, true),
            ..s
        };
        assert_eq!(decide(&s), Action::Wait);
    }

    #[test]
    fn an_ended_step_has_its_finish_proposed_until_answered() {
        let r = run();
        let with = |pending| Situation {
            executing: finishing(&r, pending),
            ..leading(&r)
        };
        assert_eq!(decide(&with(Pending::Ready)), Action::ProposeFinish);
        assert_eq!(decide(&with(Pending::InFlight)), Action::Wait);
        assert_eq!(decide(&with(Pending::Retrying)), Action::Wait);
        assert_eq!(decide(&with(Pending::Answered)), Action::Wait);
        // A cancel asked for after the step ended changes nothing: the end is recorded as it was.
        let cancelled = RunRecord {
            cancel_requested: true,
            ..run()
        };
        let s = Situation {
            executing: finishing(&cancelled, Pending::InFlight),
            ..leading(&cancelled)
        };
        assert_eq!(decide(&s), Action::Wait);
    }

    #[test]
    fn a_run_of_an_earlier_leader_is_taken_over() {
        let r = RunRecord {
            node_id: OTHER,
            term: TERM - 1,
            ..run()
        };
        assert_eq!(decide(&leading(&r)), Action::TakeOver { attempt: 2 });
    }

    #[test]
    fn a_run_given_to_this_node_in_an_earlier_term_is_taken_over() {
        let r = RunRecord {
            term: TERM - 1,
            ..run()
        };
        assert_eq!(decide(&leading(&r)), Action::TakeOver { attempt: 2 });
    }

    #[test]
    fn a_restarted_leader_leading_the_same_term_again_takes_over_its_own_run() {
        // Given to this node in this very term, but before this process started.
        for since in [BOOT - 10, BOOT] {
            let r = RunRecord { since, ..run() };
            assert_eq!(decide(&leading(&r)), Action::TakeOver { attempt: 2 }, "since {since}");
        }
        let r = RunRecord {
            since: BOOT + 1,
            ..run()
        };
        assert_eq!(decide(&leading(&r)), Action::Execute);
    }

    #[test]
    fn a_cancelled_run_of_an_earlier_leader_is_taken_over_first() {
        // The new attempt then finds the cancel and ends the run as cancelled.
        let r = RunRecord {
            node_id: OTHER,
            term: TERM - 1,
            cancel_requested: true,
            ..run()
        };
        assert_eq!(decide(&leading(&r)), Action::TakeOver { attempt: 2 });
    }

    #[test]
    fn a_takeover_in_flight_is_not_proposed_twice() {
        let r = RunRecord {
            node_id: OTHER,
            term: TERM - 1,
            ..run()
        };
        let with = |pending| Situation {
            takeover: takeover(&r, pending),
            ..leading(&r)
        };
        assert_eq!(decide(&with(Pending::InFlight)), Action::Wait);
        assert_eq!(decide(&with(Pending::Retrying)), Action::Wait);
        assert_eq!(decide(&with(Pending::Answered)), Action::Wait);
        // Its retry delay passed: proposed again.
        assert_eq!(decide(&with(Pending::Ready)), Action::TakeOver { attempt: 2 });
    }

    #[test]
    fn a_takeover_of_an_older_attempt_does_not_hold_back_the_next() {
        let r = RunRecord {
            node_id: OTHER,
            term: TERM - 1,
            attempt: 3,
            ..run()
        };
        let s = Situation {
            takeover: Some(Proposal {
                run: r.index,
                attempt: 2,
                pending: Pending::InFlight,
            }),
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::TakeOver { attempt: 4 });
    }

    #[test]
    fn a_run_that_had_its_attempts_is_given_up() {
        let r = RunRecord {
            node_id: OTHER,
            term: TERM - 1,
            attempt: MAX_ATTEMPTS,
            ..run()
        };
        assert_eq!(decide(&leading(&r)), Action::GiveUp);
        let r = RunRecord {
            attempt: MAX_ATTEMPTS - 1,
            ..r
        };
        assert_eq!(decide(&leading(&r)), Action::TakeOver { attempt: MAX_ATTEMPTS });
        // Giving up is a proposal like a takeover: not made twice.
        let r = RunRecord {
            attempt: MAX_ATTEMPTS,
            ..r
        };
        let s = Situation {
            takeover: takeover(&r, Pending::InFlight),
            ..leading(&r)
        };
        assert_eq!(decide(&s), Action::Wait);
    }

    #[test]
    fn a_run_this_process_executes_with_its_attempts_used_is_not_given_up() {
        // The fifth attempt, taken over by this very process, runs to its end.
        let r = RunRecord {
            attempt: MAX_ATTEMPTS,
            ..run()
        };
        assert_eq!(decide(&leading(&r)), Action::Execute);
    }

    #[test]
    fn abandon_is_only_ever_asked_while_executing() {
        // So the actor's "abandon, then decide again" always ends.
        let r = run();
        let runs = [None, Some(&r)];
        for leader_term in [None, Some(TERM), Some(TERM + 1)] {
            for run in runs {
                for takeover in [None, takeover(&r, Pending::InFlight)] {
                    let s = Situation {
                        leader_term,
                        node_id: ME,
                        boot_index: BOOT,
                        run,
                        executing: None,
                        takeover,
                    };
                    assert_ne!(decide(&s), Action::Abandon, "{s:?}");
                }
            }
        }
    }
}
