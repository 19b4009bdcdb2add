//! The command decoder: [`Command::decode`] of arbitrary bytes (bare, after
//! each format byte, and mutated valid encodings of arbitrary commands)
//! never panics, and whatever decodes re-encodes to bytes that decode to
//! the same command.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::strategies::{bytes, map, mutate, mutation, number, one_of, signed, text};
use super::{fuzz, regressions, Harness};
use crate::domain::kind::{Kind, State};
use crate::domain::resources::RunEnd;
use crate::domain::{Command, Decoded, Trigger};

/// Names the commands use, so that arbitrary ones meet each other.
const NAMES: &[&str] = &["app", "web", "a", "image", "building", "ready", "deploy"];

/// A trigger with arbitrary fields.
pub fn trigger() -> impl Strategy<Value = Trigger> {
    (text(), text(), one_of(&["api", "schedule", "recovery"]), signed()).prop_map(
        |(principal, reason, source, at_ms)| Trigger {
            principal,
            reason,
            source,
            at_ms,
        },
    )
}

/// A step's end with arbitrary fields.
pub fn run_end() -> impl Strategy<Value = RunEnd> {
    prop_oneof![
        text().prop_map(|outputs_json| RunEnd::Succeeded { outputs_json }),
        (text(), text()).prop_map(|(error, outputs_json)| RunEnd::Failed { error, outputs_json }),
        (text(), text()).prop_map(|(error, outputs_json)| RunEnd::Cancelled { error, outputs_json }),
        text().prop_map(|error| RunEnd::Interrupted { error }),
    ]
}

/// A kind with arbitrary fields: not one the parser would accept.
pub fn any_kind() -> impl Strategy<Value = Kind> {
    let state = (
        any::<bool>(),
        proptest::option::of(one_of(NAMES)),
        proptest::option::of(one_of(NAMES)),
        proptest::option::of(one_of(NAMES)),
        btree_map(one_of(NAMES), one_of(NAMES), 0..3),
        any::<bool>(),
        proptest::option::of(number()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(work, next, fail, cancel, on, is_final, timeout, run, step)| State {
            work,
            next,
            fail,
            cancel,
            on,
            is_final,
            timeout,
            run,
            step,
        });
    (
        one_of(NAMES),
        one_of(NAMES),
        text(),
        vec(text(), 0..3),
        btree_map(one_of(NAMES), state, 0..4),
    )
        .prop_map(|(name, initial, provider, required, states)| Kind {
            name,
            initial,
            provider,
            required,
            states,
        })
}

/// A command of any variant with arbitrary fields. A new variant gets a
/// line here (and one in the apply harness's structured commands).
pub fn any_command() -> BoxedStrategy<Command> {
    prop_oneof![
        (text(), text(), proptest::option::of(number()), trigger()).prop_map(
            |(key, value, expected_revision, trigger)| Command::PutSetting {
                key,
                value,
                expected_revision,
                trigger
            }
        ),
        (text(), proptest::option::of(number()), trigger()).prop_map(|(key, expected_revision, trigger)| {
            Command::DeleteSetting {
                key,
                expected_revision,
                trigger,
            }
        }),
        (text(), any_kind()).prop_map(|(source, kind)| Command::PutKind { source, kind }),
        (one_of(NAMES), one_of(NAMES), text(), map(NAMES), trigger()).prop_map(
            |(kind, name, spec_json, labels, trigger)| Command::CreateResource {
                kind,
                name,
                spec_json,
                labels,
                trigger
            }
        ),
        (one_of(NAMES), one_of(NAMES), one_of(NAMES), map(NAMES), trigger()).prop_map(
            |(kind, name, event, args, trigger)| Command::DoEvent {
                kind,
                name,
                event,
                args,
                trigger
            }
        ),
        (one_of(NAMES), one_of(NAMES)).prop_map(|(kind, name)| Command::DeleteResource { kind, name }),
        (number(), any::<u32>(), run_end(), signed()).prop_map(|(run, attempt, end, at_ms)| Command::FinishRun {
            run,
            attempt,
            end,
            at_ms
        }),
        (number(), any::<u32>()).prop_map(|(run, attempt)| Command::TakeOverRun { run, attempt }),
        (number(), trigger()).prop_map(|(run, trigger)| Command::CancelRun { run, trigger }),
        (number(), any::<u32>(), vec(text(), 0..4)).prop_map(|(run, attempt, lines)| Command::AppendRunLog {
            run,
            attempt,
            lines
        }),
        (text(), any_kind(), number()).prop_map(|(source, kind, revision)| Command::PutBuiltinKind {
            source,
            kind,
            revision
        }),
        security_command(text()),
    ]
    .boxed()
}

/// The settings and security commands added with security (secret
/// settings, roles, users, tokens), over names drawn from `names`: arbitrary
/// text for the decoder, a few shared names for apply, so that commands meet.
pub fn security_command(names: impl Strategy<Value = String> + Clone + 'static) -> BoxedStrategy<Command> {
    let rule = prop_oneof![
        Just("*:*".to_string()),
        Just("read:settings/app/*".to_string()),
        Just("do,read:resources/app/*".to_string()),
        text()
    ];
    prop_oneof![
        (
            names.clone(),
            text(),
            proptest::option::of(number()),
            trigger(),
            proptest::option::of(any::<bool>())
        )
            .prop_map(
                |(key, value, expected_revision, trigger, secret)| Command::PutSettingV2 {
                    key,
                    value,
                    expected_revision,
                    trigger,
                    secret
                }
            ),
        (names.clone(), bytes(), signed()).prop_map(|(admin_token_id, admin_token_hash, at_ms)| {
            Command::InitSecurity {
                admin_token_id,
                admin_token_hash,
                at_ms,
            }
        }),
        (names.clone(), vec(rule, 0..3)).prop_map(|(name, rules)| Command::PutRole { name, rules }),
        names.clone().prop_map(|name| Command::DeleteRole { name }),
        (names.clone(), vec(names.clone(), 0..3), signed()).prop_map(|(name, roles, at_ms)| Command::CreateUser {
            name,
            roles,
            at_ms
        }),
        names.clone().prop_map(|name| Command::DeleteUser { name }),
        (
            names.clone(),
            names.clone(),
            bytes(),
            signed(),
            proptest::option::of(signed()),
            text()
        )
            .prop_map(|(id, user, secret_sha256, created_at_ms, expires_at_ms, description)| {
                Command::CreateToken {
                    token: crate::domain::security::TokenRecord {
                        id,
                        user,
                        secret_sha256,
                        created_at_ms,
                        expires_at_ms,
                        description,
                    },
                }
            }),
        names.prop_map(|id| Command::RevokeToken { id }),
    ]
    .boxed()
}

/// What the decoder is given: bytes of every sort.
#[derive(Debug, Clone)]
enum Input {
    /// A command's encoding, which must decode to it.
    Encoded(Command),
    /// A command's encoding, mutated.
    Mutated(Command, Vec<super::strategies::Mutation>),
    /// A format byte and a flags byte, then anything.
    Framed(u8, u8, Vec<u8>),
    /// Anything.
    Raw(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        2 => any_command().prop_map(Input::Encoded),
        4 => (any_command(), vec(mutation(), 1..4)).prop_map(|(c, m)| Input::Mutated(c, m)),
        2 => (prop_oneof![Just(1u8), Just(2u8), any::<u8>()], prop_oneof![Just(0u8), Just(1u8), any::<u8>()], bytes())
            .prop_map(|(f, g, b)| Input::Framed(f, g, b)),
        1 => bytes().prop_map(Input::Raw),
    ]
}

/// Decodes `bytes`; whatever decodes must survive its own encoding.
pub fn decode_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(Decoded::Apply(command)) = Command::decode(bytes) {
        let again = Command::decode(&command.encode());
        prop_assert_eq!(
            again,
            Ok(Decoded::Apply(command)),
            "re-encoding what {:?} decoded to",
            bytes
        );
    }
    Ok(())
}

#[test]
fn command_decoder() {
    let harness = Harness {
        name: "command_decoder",
        per_mille: 350,
        inputs_per_case: 1,
        regressions: regressions!("command_decoder"),
    };
    fuzz(&harness, input(), |input, count| {
        count.add(1);
        match input {
            Input::Encoded(command) => {
                let bytes = command.encode();
                prop_assert_eq!(Command::decode(&bytes), Ok(Decoded::Apply(command)));
                Ok(())
            }
            Input::Mutated(command, mutations) => decode_checked(&mutate(command.encode(), &mutations)),
            Input::Framed(format, flags, body) => {
                let mut bytes = vec![format, flags];
                bytes.extend(body);
                decode_checked(&bytes)
            }
            Input::Raw(bytes) => decode_checked(&bytes),
        }
    });
}
