//! The settings checks, run after everything healed, over the whole history:
//!
//! - **lost**: every acknowledged write survives. On a key it is either still
//!   there (the final read returns it) or a later write that certainly came
//!   after it replaced it (a compare-and-set that expected its revision, or a
//!   write whose reported previous value was it);
//! - **nothing appears that was not written**: every value read (or reported
//!   as a previous value) was written by some operation whose outcome is not
//!   "certainly not applied", and at one revision only;
//! - **linearizable**: each key, a single register with put, compare-and-set
//!   and read, has an order of its operations that respects real time and the
//!   register's rules. The search is Wing & Gong's with Lowe's memoisation
//!   (as in Knossos and Porcupine), over each key on its own.
//!
//! Operations of unknown outcome may have happened or not. Values are unique
//! per write, so an unknown write that took effect is seen: keys written
//! blindly are written once (later writes are compare-and-sets), and a
//! compare-and-set needs the revision of the value it replaces, which only a
//! read of that value gives. An unknown write nobody ever saw, not even the
//! final read after healing, therefore did not happen, and the checker drops
//! it; one that was seen must be placed, anywhere after it was sent.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::{Call, Op, Outcome, FINAL_CLIENT};
use super::rng::Rng;

/// What the checks found in one history.
#[derive(Debug, Default)]
pub struct Findings {
    /// Distinct keys checked.
    pub keys: usize,
    /// Operations checked.
    pub operations: usize,
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Operations whose outcome was unknown.
    pub unknown: usize,
    /// Acknowledged writes that are gone, one line each.
    pub lost: Vec<String>,
    /// Everything else that breaks the rules, one line each.
    pub anomalies: Vec<String>,
}

/// The condition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cond {
    Any,
    Absent,
    Revision(u64),
}

impl Cond {
    fn of(call: &Call) -> Cond {
        match call {
            Call::Cas { expected: 0, .. } => Cond::Absent,
            Call::Cas { expected, .. } => Cond::Revision(*expected),
            _ => Cond::Any,
        }
    }
}

/// The register's value: an interned value, or absent.
type State = Option<u32>;

/// One operation as the model sees it.
#[derive(Clone, Debug)]
enum Kind {
    /// Returns this value.
    Read(State),
    /// Takes effect if `cond` holds; `prev`, when reported, is the value it replaced.
    Write {
        value: u32,
        cond: Cond,
        prev: Option<State>,
    },
    /// A compare-and-set refused: its condition did not hold.
    Refused(Cond),
}

#[derive(Clone, Debug)]
struct ModelOp<'a> {
    start: u64,
    /// `u64::MAX` for an operation of unknown outcome: it may take effect any time after it was sent.
    end: u64,
    kind: Kind,
    origin: &'a Op,
}

fn holds(cond: Cond, state: State, revs: &[Option<u64>]) -> bool {
    match (cond, state) {
        (Cond::Any, _) => true,
        (Cond::Absent, s) => s.is_none(),
        (Cond::Revision(_), None) => false,
        (Cond::Revision(r), Some(v)) => revs[v as usize] == Some(r),
    }
}

fn step(state: State, kind: &Kind, revs: &[Option<u64>]) -> Option<State> {
    match kind {
        Kind::Read(v) => (*v == state).then_some(state),
        Kind::Write { value, cond, prev } => {
            if !holds(*cond, state, revs) || prev.is_some_and(|p| p != state) {
                return None;
            }
            Some(Some(*value))
        }
        Kind::Refused(cond) => (!holds(*cond, state, revs)).then_some(state),
    }
}

/// The search's verdict on one key.
#[derive(Debug)]
enum Verdict {
    Linearizable,
    /// No order exists. `placed` operations could be ordered at best; the
    /// operation `stuck` could not be placed before its answer came, from `state`.
    Not {
        placed: usize,
        stuck: usize,
        state: State,
    },
    /// The search gave up after this many steps.
    Undecided(u64),
}

const NIL: usize = usize::MAX;

/// Wing & Gong's search with Lowe's cache of (operations placed, state)
/// pairs already explored; the set of placed operations is kept as a
/// Zobrist hash (128 random bits per operation, xored), so a cache entry is
/// small whatever the history's length.
fn search(ops: &[ModelOp], revs: &[Option<u64>], budget: u64) -> Verdict {
    let n = ops.len();
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.start, 0, i));
        events.push((op.end, 1, i));
    }
    // Calls before returns at the same instant: such operations count as concurrent.
    events.sort();
    // Node 0 is the head; node k + 1 is events[k].
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut call_node = vec![0; n];
    let mut ret_node = vec![0; n];
    for k in 0..2 * n {
        let node = k + 1;
        prev[node] = k;
        next[k] = node;
        let (_, kind, i) = events[k];
        if kind == 0 {
            call_node[i] = node;
        } else {
            ret_node[i] = node;
        }
    }
    let unlink = |x: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        next[prev[x]] = next[x];
        if next[x] != NIL {
            prev[next[x]] = prev[x];
        }
    };
    let relink = |x: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        next[prev[x]] = x;
        if next[x] != NIL {
            prev[next[x]] = x;
        }
    };
    let mut zobrist = Rng::new(0x006e_656d_6573_6973);
    let keys: Vec<u128> = (0..n)
        .map(|_| ((zobrist.next_u64() as u128) << 64) | zobrist.next_u64() as u128)
        .collect();

    let mut state: State = None;
    let mut placed: u128 = 0;
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut cache: HashSet<(u128, State)> = HashSet::new();
    let mut best = (0usize, NIL, None);
    let mut entry = next[0];
    let mut steps = 0u64;
    while next[0] != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Undecided(budget);
        }
        let is_call = entry != NIL && events[entry - 1].1 == 0;
        if is_call {
            let i = events[entry - 1].2;
            if let Some(after) = step(state, &ops[i].kind, revs) {
                let with = placed ^ keys[i];
                if cache.insert((with, after)) {
                    stack.push((i, state));
                    state = after;
                    placed = with;
                    unlink(call_node[i], &mut next, &mut prev);
                    unlink(ret_node[i], &mut next, &mut prev);
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // An answer came for an operation not yet placed: undo the last placement.
            if entry != NIL && (best.1 == NIL || stack.len() > best.0) {
                best = (stack.len(), events[entry - 1].2, state);
            }
            let Some((i, before)) = stack.pop() else {
                return Verdict::Not {
                    placed: best.0,
                    stuck: best.1,
                    state: best.2,
                };
            };
            state = before;
            placed ^= keys[i];
            relink(ret_node[i], &mut next, &mut prev);
            relink(call_node[i], &mut next, &mut prev);
            entry = next[call_node[i]];
        }
    }
    Verdict::Linearizable
}

/// Checks every key of `ops` (see the module's doc). `budget` bounds the
/// linearizability search per key; a key that exhausts it is reported as an
/// anomaly, since it was not proven linearizable.
pub fn check(ops: &[Op], budget: u64) -> Findings {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut f = Findings {
        keys: by_key.len(),
        operations: ops.iter().filter(|o| o.client != FINAL_CLIENT).count(),
        acknowledged: ops.iter().filter(|o| o.acknowledged()).count(),
        unknown: ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Unknown { .. }))
            .count(),
        ..Findings::default()
    };
    for (key, ops) in by_key {
        check_key(key, &ops, budget, &mut f);
    }
    f
}

fn check_key<'a>(key: &str, ops: &[&'a Op], budget: u64, f: &mut Findings) {
    // Who wrote each value.
    let mut writers: HashMap<&'a str, &'a Op> = HashMap::new();
    for &op in ops {
        if let Some(v) = op.written_value() {
            if let Some(other) = writers.insert(v, op) {
                f.anomalies.push(format!(
                    "key {key}: the workload wrote value {v:?} twice (#{} and #{}): a harness bug",
                    other.id, op.id
                ));
            }
        }
    }

    // Every value seen, at which revision, by whom.
    let mut revision_of: HashMap<&'a str, (u64, &'a Op)> = HashMap::new();
    // Each finding about a value is reported once, at its first sighting.
    let mut reported: HashSet<&'a str> = HashSet::new();
    let mut observe = |value: &'a str, revision: u64, by: &'a Op, f: &mut Findings| {
        let Some(w) = writers.get(value) else {
            if reported.insert(value) {
                f.anomalies.push(format!(
                    "key {key}: {} sees value {value:?} at revision {revision}, which no client wrote",
                    by.describe()
                ));
            }
            return;
        };
        match revision_of.get(value) {
            Some((r, first)) if *r != revision => {
                if reported.insert(value) {
                    f.anomalies.push(format!(
                        "key {key}: value {value:?}, written once, is at revision {r} for #{} and at revision \
                         {revision} for #{}: applied twice",
                        first.id, by.id
                    ));
                }
            }
            Some(_) => {}
            None => {
                match &w.outcome {
                    Outcome::Failed { why } => f.anomalies.push(format!(
                        "key {key}: value {value:?} was written by #{} which was told it was not applied ({why}), \
                         yet {} sees it at revision {revision}",
                        w.id,
                        by.describe()
                    )),
                    Outcome::Refused { why } => f.anomalies.push(format!(
                        "key {key}: value {value:?} was written by #{} whose compare-and-set was refused ({why}), \
                         yet {} sees it at revision {revision}",
                        w.id,
                        by.describe()
                    )),
                    _ => {}
                }
                revision_of.insert(value, (revision, by));
            }
        }
    };
    for &op in ops {
        match &op.outcome {
            Outcome::Written { revision, previous } => {
                if let Some(v) = op.written_value() {
                    observe(v, *revision, op, f);
                }
                if let Some((pv, pr)) = previous {
                    observe(pv, *pr, op, f);
                }
            }
            Outcome::Read { value: Some((v, r)) } => observe(v, *r, op, f),
            _ => {}
        }
    }

    // Lost: an acknowledged write is the final value, or certainly replaced.
    let final_read = ops
        .iter()
        .rev()
        .find(|o| o.client == FINAL_CLIENT && matches!(o.outcome, Outcome::Read { .. }));
    let mut survived: HashSet<u64> = HashSet::new();
    if let Some(Op {
        outcome: Outcome::Read { value: Some((_, r)) },
        ..
    }) = final_read
    {
        survived.insert(*r);
    }
    for op in ops {
        let applied = match &op.outcome {
            Outcome::Written { previous, .. } => {
                if let Some((_, pr)) = previous {
                    survived.insert(*pr);
                }
                true
            }
            // Seen, so applied, whatever the client was told (a wrong answer is reported above).
            Outcome::Unknown { .. } | Outcome::Failed { .. } | Outcome::Refused { .. } => {
                op.written_value().is_some_and(|v| revision_of.contains_key(v))
            }
            _ => false,
        };
        if let (true, Cond::Revision(r)) = (applied, Cond::of(&op.call)) {
            survived.insert(r);
        }
    }
    let acked: Vec<&&Op> = ops.iter().filter(|o| o.acknowledged()).collect();
    match final_read {
        None if !acked.is_empty() => f.anomalies.push(format!(
            "key {key}: no final read after healing, so its {} acknowledged writes could not be checked",
            acked.len()
        )),
        None => {}
        Some(fin) => {
            for op in acked {
                if let Outcome::Written { revision, .. } = op.outcome {
                    if !survived.contains(&revision) {
                        f.lost.push(format!(
                            "key {key}: acknowledged {} is gone; after healing: {}",
                            op.describe(),
                            fin.describe()
                        ));
                    }
                }
            }
        }
    }

    // Linearizability.
    let mut ids: HashMap<&'a str, u32> = HashMap::new();
    let mut revs: Vec<Option<u64>> = Vec::new();
    let mut intern = |v: &'a str| -> u32 {
        *ids.entry(v).or_insert_with(|| {
            revs.push(revision_of.get(v).map(|(r, _)| *r));
            (revs.len() - 1) as u32
        })
    };
    let nanos = |d: std::time::Duration| d.as_nanos().min(u64::MAX as u128 - 1) as u64;
    let mut model: Vec<ModelOp> = Vec::new();
    for &op in ops {
        // Operations that may take effect any time after they were sent have no end.
        let mut open_ended = false;
        let kind = match (&op.call, &op.outcome) {
            (Call::Read, Outcome::Read { value }) => {
                match value {
                    // A value nobody wrote was reported above; it cannot be explained.
                    Some((v, _)) if !writers.contains_key(v.as_str()) => continue,
                    Some((v, _)) => Kind::Read(Some(intern(v))),
                    None => Kind::Read(None),
                }
            }
            (Call::Read, _) => continue,
            (call, Outcome::Written { previous, .. }) => {
                let value = intern(op.written_value().unwrap_or(""));
                let prev = match previous {
                    None => Some(None),
                    Some((pv, _)) if writers.contains_key(pv.as_str()) => Some(Some(intern(pv))),
                    Some(_) => None,
                };
                Kind::Write {
                    value,
                    cond: Cond::of(call),
                    prev,
                }
            }
            // A write told "not applied" or "refused" whose value was seen anyway
            // is reported above; for the search it counts as unknown, so that
            // the rest of the key's history is still checked.
            (call @ (Call::Put { .. } | Call::Cas { .. }), outcome)
                if matches!(outcome, Outcome::Unknown { .. })
                    || op.written_value().is_some_and(|v| revision_of.contains_key(v)) =>
            {
                let v = op.written_value().unwrap_or("");
                if !revision_of.contains_key(v) {
                    continue; // never seen: it did not happen (see the module's doc)
                }
                open_ended = true;
                Kind::Write {
                    value: intern(v),
                    cond: Cond::of(call),
                    prev: None,
                }
            }
            (call @ Call::Cas { .. }, Outcome::Refused { .. }) => Kind::Refused(Cond::of(call)),
            _ => continue,
        };
        model.push(ModelOp {
            start: nanos(op.start),
            end: if open_ended {
                u64::MAX
            } else {
                nanos(op.end).max(nanos(op.start))
            },
            kind,
            origin: op,
        });
    }
    match search(&model, &revs, budget) {
        Verdict::Linearizable => {}
        Verdict::Undecided(steps) => f.anomalies.push(format!(
            "key {key}: linearizability of its {} operations was not decided within {steps} search steps",
            model.len()
        )),
        Verdict::Not { placed, stuck, state } => {
            let names: HashMap<u32, &str> = ids.iter().map(|(k, v)| (*v, *k)).collect();
            let shown = match state {
                None => "absent".to_string(),
                Some(v) => format!(
                    "{:?} at revision {:?}",
                    names.get(&v).copied().unwrap_or("?"),
                    revs[v as usize]
                ),
            };
            let (stuck_desc, around) = if stuck == NIL {
                ("(none)".to_string(), String::new())
            } else {
                let s = &model[stuck];
                let from = s.start.saturating_sub(2_000_000_000);
                let around: Vec<String> = model
                    .iter()
                    .filter(|m| m.end >= from && m.start <= s.end.min(s.start + 2_000_000_000))
                    .take(12)
                    .map(|m| format!("\n      {}", m.origin.describe()))
                    .collect();
                (s.origin.describe(), around.concat())
            };
            f.anomalies.push(format!(
                "key {key}: not linearizable: at most {placed} of its {} operations can be ordered; \
                 {stuck_desc} cannot be placed (the register would be {shown}); operations around it:{around}",
                model.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn op(id: usize, key: &str, call: Call, start: u64, end: u64, outcome: Outcome) -> Op {
        Op {
            id,
            client: id % 3,
            node: "n".into(),
            key: key.into(),
            call,
            start: Duration::from_millis(start),
            end: Duration::from_millis(end),
            outcome,
        }
    }
    fn put(v: &str) -> Call {
        Call::Put { value: v.into() }
    }
    fn cas(e: u64, v: &str) -> Call {
        Call::Cas {
            expected: e,
            value: v.into(),
        }
    }
    fn ok(r: u64, prev: Option<(&str, u64)>) -> Outcome {
        Outcome::Written {
            revision: r,
            previous: prev.map(|(v, r)| (v.to_string(), r)),
        }
    }
    fn read(v: Option<(&str, u64)>) -> Outcome {
        Outcome::Read {
            value: v.map(|(v, r)| (v.to_string(), r)),
        }
    }
    fn unknown() -> Outcome {
        Outcome::Unknown { why: "timeout".into() }
    }
    fn refused() -> Outcome {
        Outcome::Refused { why: "x".into() }
    }
    /// Asserts the history shows no anomaly and loses nothing.
    fn assert_clean(h: &[Op]) {
        let f = check(h, 1_000_000);
        assert!(f.anomalies.is_empty() && f.lost.is_empty(), "{f:?}");
    }
    fn fin(mut o: Op) -> Op {
        o.client = FINAL_CLIENT;
        o
    }

    #[test]
    fn a_sequential_cas_chain_is_linearizable() {
        let h = vec![
            op(0, "k", cas(0, "a"), 0, 10, ok(5, None)),
            op(1, "k", Call::Read, 11, 12, read(Some(("a", 5)))),
            op(2, "k", cas(5, "b"), 13, 20, ok(7, Some(("a", 5)))),
            op(3, "k", cas(5, "c"), 21, 22, refused()),
            fin(op(4, "k", Call::Read, 30, 31, read(Some(("b", 7))))),
        ];
        assert_clean(&h);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = vec![
            op(0, "k", cas(0, "a"), 0, 10, ok(5, None)),
            op(1, "k", Call::Read, 1, 2, read(None)),
            // b's CAS overlaps a read that already sees b.
            op(2, "k", cas(5, "b"), 11, 30, ok(8, Some(("a", 5)))),
            op(3, "k", Call::Read, 12, 13, read(Some(("b", 8)))),
            fin(op(4, "k", Call::Read, 40, 41, read(Some(("b", 8))))),
        ];
        assert_clean(&h);
    }

    #[test]
    fn a_stale_read_is_an_anomaly() {
        let h = vec![
            op(0, "k", cas(0, "a"), 0, 10, ok(5, None)),
            op(1, "k", cas(5, "b"), 11, 20, ok(8, Some(("a", 5)))),
            op(2, "k", Call::Read, 21, 22, read(Some(("a", 5)))),
            fin(op(3, "k", Call::Read, 40, 41, read(Some(("b", 8))))),
        ];
        let f = check(&h, 1_000_000);
        assert_eq!(f.anomalies.len(), 1, "{f:?}");
        assert!(f.anomalies[0].contains("not linearizable"), "{f:?}");
    }

    #[test]
    fn an_acknowledged_write_that_vanished_is_lost() {
        let h = vec![
            op(0, "u/1", put("x"), 0, 10, ok(5, None)),
            fin(op(1, "u/1", Call::Read, 40, 41, read(None))),
        ];
        let f = check(&h, 1_000_000);
        assert_eq!(f.lost.len(), 1, "{f:?}");
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let seen = vec![
            op(0, "u/1", put("x"), 0, 10, unknown()),
            fin(op(1, "u/1", Call::Read, 40, 41, read(Some(("x", 5))))),
        ];
        let unseen = vec![
            op(0, "u/1", put("x"), 0, 10, unknown()),
            fin(op(1, "u/1", Call::Read, 40, 41, read(None))),
        ];
        for h in [seen, unseen] {
            assert_clean(&h);
        }
        // A CAS of unknown outcome that took effect explains a refused CAS
        // and the value read later, even though its answer never came.
        let h = vec![
            op(0, "k", cas(0, "a"), 0, 10, ok(5, None)),
            op(1, "k", cas(5, "b"), 11, 12, unknown()),
            op(2, "k", cas(5, "c"), 20, 21, refused()),
            fin(op(3, "k", Call::Read, 40, 41, read(Some(("b", 9))))),
        ];
        assert_clean(&h);
    }

    #[test]
    fn a_value_nobody_wrote_or_a_failed_write_seen_is_an_anomaly() {
        let h = vec![
            op(
                0,
                "u/1",
                put("x"),
                0,
                10,
                Outcome::Failed {
                    why: "UNAVAILABLE".into(),
                },
            ),
            fin(op(1, "u/1", Call::Read, 40, 41, read(Some(("x", 5))))),
            fin(op(2, "u/2", Call::Read, 40, 41, read(Some(("ghost", 6))))),
        ];
        let f = check(&h, 1_000_000);
        assert!(f.anomalies.iter().any(|a| a.contains("not applied")), "{f:?}");
        assert!(f.anomalies.iter().any(|a| a.contains("no client wrote")), "{f:?}");
    }

    #[test]
    fn a_write_told_not_applied_that_was_applied_is_one_anomaly() {
        let h = vec![
            op(
                0,
                "u/1",
                put("x"),
                0,
                10,
                Outcome::Failed {
                    why: "UNAVAILABLE".into(),
                },
            ),
            op(1, "u/1", Call::Read, 20, 21, read(Some(("x", 5)))),
            fin(op(2, "u/1", Call::Read, 40, 41, read(Some(("x", 5))))),
        ];
        let f = check(&h, 1_000_000);
        assert_eq!(f.anomalies.len(), 1, "{f:?}");
        assert!(f.lost.is_empty(), "{f:?}");
    }

    #[test]
    fn a_write_applied_twice_is_an_anomaly() {
        let h = vec![
            op(0, "u/1", put("x"), 0, 10, ok(5, None)),
            fin(op(1, "u/1", Call::Read, 40, 41, read(Some(("x", 9))))),
        ];
        let f = check(&h, 1_000_000);
        assert!(f.anomalies.iter().any(|a| a.contains("applied twice")), "{f:?}");
    }

    #[test]
    fn a_refused_cas_whose_condition_held_is_an_anomaly() {
        let h = vec![
            op(0, "k", cas(0, "a"), 0, 10, ok(5, None)),
            op(1, "k", cas(5, "b"), 20, 21, refused()),
            fin(op(2, "k", Call::Read, 40, 41, read(Some(("a", 5))))),
        ];
        let f = check(&h, 1_000_000);
        assert_eq!(f.anomalies.len(), 1, "{f:?}");
    }
}
