//! The kind parser: [`Kind::parse`] of arbitrary text and of mutated kind
//! files (the test kinds and the built-in ones) never panics, and every kind
//! it accepts keeps the parser's own rules. The same text goes through
//! [`compile_kind`] (the API's compile) and through a format 1 `PutKind`,
//! whose decoder parses the kind as those builds did.

use std::collections::{BTreeSet, VecDeque};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::strategies::{mutate, mutation, text, Mutation};
use super::{fuzz, regressions, Harness};
use crate::domain::kind::{self, check_event_name, check_kind_name, check_state_name, Kind, CREATE_EVENT};
use crate::domain::resources::compile_kind;
use crate::domain::test_kinds::{APP_LIFECYCLE, DB_BACKUP, DESIGN_EXAMPLE, SMALL_APP};
use crate::domain::{Command, Decoded, Outcome, Rejection};

/// Every valid kind file there is to start from.
pub fn kind_files() -> Vec<&'static str> {
    let mut files = vec![APP_LIFECYCLE, DB_BACKUP, DESIGN_EXAMPLE, SMALL_APP];
    files.extend(kind::BUILTIN.iter().map(|(_, source)| *source));
    files
}

/// Tokens a kind file is made of, to splice into one.
const TOKENS: &[&str] = &[
    "[states.x]",
    "[states.\"\"]",
    "work = true",
    "final = true",
    "next = \"x\"",
    "fail = \"x\"",
    "cancel = \"x\"",
    "on = { go = \"x\", create = \"x\" }",
    "timeout = 0",
    "timeout = -1",
    "timeout = 9223372036854775807",
    "run = { file = \"a.sh\" }",
    "run = \"echo\"",
    "step = \"build\"",
    "required = [\"\", \"a\", \"a\"]",
    "kind = \"Image\"",
    "initial = \"nowhere\"",
    "provider = \"\"",
    "[[states]]",
    "\"\"\"",
    "=",
    "[",
    "\u{0}",
];

/// A change to a kind file at the level of its lines.
#[derive(Debug, Clone)]
enum Edit {
    /// Bytes, as [`mutate`] changes them (read back lossily as UTF-8).
    Bytes(Mutation),
    /// Remove the line at.
    DropLine(Index),
    /// Repeat the line at.
    DupLine(Index),
    /// Swap two lines.
    SwapLines(Index, Index),
    /// Insert a token line at.
    Splice(Index, &'static str),
    /// Replace the text after the `=` of the line at.
    Value(Index, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => mutation().prop_map(Edit::Bytes),
        2 => any::<Index>().prop_map(Edit::DropLine),
        1 => any::<Index>().prop_map(Edit::DupLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        2 => (any::<Index>(), select(TOKENS)).prop_map(|(i, t)| Edit::Splice(i, t)),
        2 => (any::<Index>(), text()).prop_map(|(i, t)| Edit::Value(i, format!("{t:?}"))),
    ]
}

fn apply_edit(source: String, edit: &Edit) -> String {
    if let Edit::Bytes(m) = edit {
        return String::from_utf8_lossy(&mutate(source.into_bytes(), std::slice::from_ref(m))).into_owned();
    }
    let mut lines: Vec<String> = source.lines().map(str::to_string).collect();
    let n = lines.len();
    match edit {
        Edit::Bytes(_) => unreachable!("handled above"),
        Edit::Splice(i, token) => lines.insert(i.index(n + 1), token.to_string()),
        _ if n == 0 => {}
        Edit::DropLine(i) => {
            lines.remove(i.index(n));
        }
        Edit::DupLine(i) => {
            let line = lines[i.index(n)].clone();
            lines.insert(i.index(n), line);
        }
        Edit::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Edit::Value(i, value) => {
            let line = &mut lines[i.index(n)];
            if let Some((key, _)) = line.split_once('=') {
                *line = format!("{key}= {value}");
            }
        }
    }
    lines.join("\n") + "\n"
}

fn source() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (select(kind_files()), vec(edit(), 1..5))
            .prop_map(|(file, edits)| edits.iter().fold(file.to_string(), apply_edit)),
        1 => select(kind_files()).prop_map(str::to_string),
        2 => text(),
    ]
}

/// The rules the parser promises of every kind it accepts.
pub fn check_kind(kind: &Kind) -> Result<(), TestCaseError> {
    let name = &kind.name;
    prop_assert!(check_kind_name(name).is_ok(), "kind name {:?}", name);
    prop_assert!(!kind.provider.is_empty(), "kind {:?}: empty provider", name);
    prop_assert!(!kind.states.is_empty(), "kind {:?}: no states", name);
    prop_assert!(kind.states.contains_key(&kind.initial), "kind {:?}: initial", name);
    let mut seen = BTreeSet::new();
    for key in &kind.required {
        prop_assert!(
            !key.trim().is_empty() && seen.insert(key),
            "kind {:?}: required {:?}",
            name,
            key
        );
    }
    for (state_name, state) in &kind.states {
        let at = format!("kind {name:?}: state {state_name:?}");
        prop_assert!(check_state_name(state_name).is_ok(), "{}: name", at);
        prop_assert!(!(state.is_final && state.work), "{}: final and work", at);
        prop_assert!(!state.is_final || state.on.is_empty(), "{}: final with events", at);
        if state.work {
            prop_assert!(state.next.is_some() && state.fail.is_some(), "{}: next/fail", at);
            prop_assert!(state.on.is_empty(), "{}: work with events", at);
            if let Some(t) = state.timeout {
                prop_assert!((1..=kind::MAX_TIMEOUT_SECS).contains(&t), "{}: timeout {}", at, t);
            }
        } else {
            prop_assert!(
                state.next.is_none()
                    && state.fail.is_none()
                    && state.cancel.is_none()
                    && state.timeout.is_none()
                    && state.run.is_none()
                    && state.step.is_none(),
                "{}: work keys on a stable state",
                at
            );
            prop_assert!(state.is_final || !state.on.is_empty(), "{}: dead end", at);
        }
        for event in state.on.keys() {
            prop_assert!(
                check_event_name(event).is_ok() && event != CREATE_EVENT,
                "{}: event {:?}",
                at,
                event
            );
        }
        for (key, target) in state.targets() {
            prop_assert!(
                kind.states.contains_key(target),
                "{}: {} to unknown {:?}",
                at,
                key,
                target
            );
        }
    }
    // Every state is reachable from the initial one.
    let mut reached = BTreeSet::from([kind.initial.as_str()]);
    let mut queue = VecDeque::from([kind.initial.as_str()]);
    while let Some(current) = queue.pop_front() {
        for (_, target) in kind.states[current].targets() {
            if reached.insert(target) {
                queue.push_back(target);
            }
        }
    }
    prop_assert_eq!(reached.len(), kind.states.len(), "kind {:?}: unreachable states", name);
    Ok(())
}

#[test]
fn kind_parser() {
    let harness = Harness {
        name: "kind_parser",
        per_mille: 100,
        inputs_per_case: 1,
        regressions: regressions!("kind_parser"),
    };
    fuzz(&harness, source(), |source, count| {
        count.add(1);
        let parsed = Kind::parse(&source);
        match &parsed {
            Ok(kind) => {
                check_kind(kind)?;
                prop_assert_eq!(&Kind::parse(&source), &parsed, "parsing twice");
            }
            Err(e) => prop_assert!(!e.is_empty() && !e.contains('\n'), "error {:?}", e),
        }
        let builtin = parsed
            .as_ref()
            .is_ok_and(|k| kind::BUILTIN.iter().any(|(n, _)| *n == k.name));
        match compile_kind(&source) {
            Ok(kind) => prop_assert!(
                !builtin && parsed.as_ref() == Ok(&kind),
                "compile_kind accepted {:?}",
                kind
            ),
            Err(Rejection::InvalidArgument(_)) => prop_assert!(parsed.is_err(), "compile_kind refused a valid kind"),
            Err(Rejection::FailedPrecondition(_)) => prop_assert!(builtin, "refused as built in"),
            Err(other) => prop_assert!(false, "compile_kind answered {:?}", other),
        }
        // A format 1 PutKind (variant 2) carrying the text: decoded, parsed
        // and checked as those builds did, never a panic.
        let mut legacy = vec![1u8];
        legacy.extend(bincode::serialize(&(2u32, &source)).unwrap_or_default());
        match Command::decode(&legacy) {
            Ok(Decoded::Apply(Command::PutKind { kind, .. })) => check_kind(&kind)?,
            Ok(Decoded::Answer(outcome)) => prop_assert!(matches!(*outcome, Outcome::Rejected(_)), "{:?}", outcome),
            other => prop_assert!(false, "a format 1 kind decoded to {:?}", other),
        }
        Ok(())
    });
}
