//! Kinds: declarative state machines, one TOML file each (the format is in
//! the design document and in docs/kinds.md). Built-in kinds are written in
//! the same format and embedded in the binary.
//!
//! [`Kind::parse`] reads a kind file in two steps: the TOML is read into
//! raw structures that reject unknown keys, then converted and validated
//! (state names, targets, the rules of work, stable and final states,
//! reachability). The first problem found is returned
//! as one line naming the kind, the state and the key at fault, e.g.
//! `kind "app": state "building": next: unknown state "bilt"`.
//!
//! The provider a kind names, and the keys only a provider reads (`run`,
//! `step`), are opaque here: which providers exist and what they need is
//! checked at the API by the node's providers, never in apply, so nodes of
//! different builds give the same answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// A parsed, validated kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kind {
    /// The kind's name (`kind = "..."`).
    pub name: String,
    /// The state a new resource enters.
    pub initial: String,
    /// The provider that runs this kind's work states; opaque to the
    /// domain (the API checks this node has it).
    pub provider: String,
    /// Spec keys a resource of this kind must have (`required = [...]`).
    pub required: Vec<String>,
    /// The states, by name.
    pub states: BTreeMap<String, State>,
}

/// One state of a kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// A work state: its provider step runs on entry.
    pub work: bool,
    /// Work states: where a successful step leads.
    pub next: Option<String>,
    /// Work states: where a failed step leads.
    pub fail: Option<String>,
    /// Work states: where a cancelled step leads (defaults to `fail`).
    pub cancel: Option<String>,
    /// Stable states: the events they take, each to a target state.
    pub on: BTreeMap<String, String>,
    /// A final state: takes no events; the resource may then be deleted.
    pub is_final: bool,
    /// Work states: seconds a step may take before it fails.
    pub timeout: Option<u64>,
    /// Work states: the script the step runs (read by the `exec` provider).
    pub run: Option<String>,
    /// Work states: which of its steps the provider runs (read by providers
    /// with named steps, such as `local`).
    #[serde(default)]
    pub step: Option<String>,
}

/// The default step timeout, for work states that do not set one.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// The longest step timeout a kind may set: seven days.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// The event of a resource's first run (creation enters the initial state).
/// It is reserved: a kind may not declare it in `on`.
pub const CREATE_EVENT: &str = "create";

/// The longest kind, state or event name.
pub const MAX_NAME_LEN: usize = 64;

impl Kind {
    /// Parses and validates a kind file. The error names the kind, the state
    /// and the key at fault.
    pub fn parse(source: &str) -> Result<Kind, String> {
        let table: toml::Table = toml::from_str(source).map_err(|e| syntax_error(source, &e))?;
        let raw = RawKind::from_table(&table)?;
        raw.into_kind()
    }

    /// The state `name`, if the kind has it.
    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.get(name)
    }

    /// A work state's target after a cancelled step.
    pub fn cancel_target<'a>(&'a self, state: &'a State) -> Option<&'a str> {
        state.cancel.as_deref().or(state.fail.as_deref())
    }
}

impl State {
    /// The events this state takes, sorted.
    pub fn event_names(&self) -> Vec<&str> {
        self.on.keys().map(String::as_str).collect()
    }

    /// The step timeout in seconds: `timeout`, or [`DEFAULT_TIMEOUT_SECS`].
    pub fn timeout_secs(&self) -> u64 {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)
    }

    /// Every state this one can lead to (next, fail, cancel and the events'
    /// targets), with the key that names it (`on.EVENT` for events).
    pub fn targets(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (key, target) in [("next", &self.next), ("fail", &self.fail), ("cancel", &self.cancel)] {
            if let Some(t) = target {
                out.push((key.to_string(), t.as_str()));
            }
        }
        for (event, target) in &self.on {
            out.push((format!("on.{event}"), target.as_str()));
        }
        out
    }
}

/// Checks a kind name: 1-64 characters of `a-z`, `0-9`, `_` and `-`,
/// starting with a letter.
pub fn check_kind_name(name: &str) -> Result<(), String> {
    if name.len() <= MAX_NAME_LEN && name.starts_with(|c: char| c.is_ascii_lowercase()) && name.chars().all(name_char) {
        Ok(())
    } else {
        Err(format!(
            "invalid kind name {name:?}: use 1-{MAX_NAME_LEN} characters of a-z, 0-9, _ and -, starting with a letter"
        ))
    }
}

/// Checks a state name: 1-64 characters of `a-z`, `0-9`, `_` and `-`.
pub fn check_state_name(name: &str) -> Result<(), String> {
    if plain_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid state name {name:?}: use 1-{MAX_NAME_LEN} characters of a-z, 0-9, _ and -"
        ))
    }
}

/// Checks an event name: 1-64 characters of `a-z`, `0-9`, `_` and `-`.
/// (`create` is a valid event name, but reserved: kinds may not declare it.)
pub fn check_event_name(name: &str) -> Result<(), String> {
    if plain_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid event name {name:?}: use 1-{MAX_NAME_LEN} characters of a-z, 0-9, _ and -"
        ))
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.chars().all(name_char)
}

/// `kind file: line N: message` for a TOML syntax error.
fn syntax_error(source: &str, e: &toml::de::Error) -> String {
    let message = one_line(e.message());
    match e.span() {
        Some(span) => {
            let start = span.start.min(source.len());
            let before = &source.as_bytes()[..start];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
            format!("kind file: line {line}: {message} (column {column})")
        }
        None => format!("kind file: {}", one_line(&e.to_string())),
    }
}

fn one_line(s: &str) -> String {
    s.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a `run = { file = "..." }` that reached the server is refused: the
/// file is on the client's disk, and `opsctl kinds apply` reads it and sends
/// the script inline, so every node stores and runs the same script.
fn unresolved_run_file(run: &toml::Value) -> String {
    let shown = match run.get("file").and_then(|f| f.as_str()) {
        Some(file) => format!("{{ file = {file:?} }}"),
        None => "a table".to_string(),
    };
    format!(
        "{shown} was not read: a script file is read by `opsctl kinds apply`, which sends the script \
         inline; a kind sent another way must give the script itself (run = \"...\")"
    )
}

/// The top level of a kind file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    kind: Option<String>,
    initial: Option<String>,
    provider: Option<String>,
    #[serde(default)]
    required: Vec<String>,
    #[allow(dead_code)]
    description: Option<String>,
    /// Read state by state by [`RawState::from_value`], for errors that name the state.
    #[serde(default)]
    states: toml::Table,
}

const KIND_KEYS: &[&str] = &["kind", "initial", "provider", "required", "description", "states"];

/// One `[states.NAME]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    work: bool,
    next: Option<String>,
    fail: Option<String>,
    cancel: Option<String>,
    #[serde(default)]
    on: BTreeMap<String, String>,
    #[serde(default, rename = "final")]
    is_final: bool,
    timeout: Option<i64>,
    run: Option<String>,
    step: Option<String>,
}

const STATE_KEYS: &[&str] = &[
    "work", "next", "fail", "cancel", "on", "final", "timeout", "run", "step",
];

/// Deserializes `table` into `T` (whose fields are all optional). On error,
/// finds the key at fault by reading each key on its own, and returns
/// `KEY: message`.
fn read_table<T: for<'de> Deserialize<'de>>(table: &toml::Table, known: &[&str]) -> Result<T, String> {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            return Err(format!("{key}: unknown key (known keys: {})", known.join(", ")));
        }
    }
    toml::Value::Table(table.clone()).try_into::<T>().map_err(|whole| {
        for (key, value) in table {
            let mut one = toml::Table::new();
            one.insert(key.clone(), value.clone());
            if let Err(e) = toml::Value::Table(one).try_into::<T>() {
                return format!("{key}: {}", one_line(e.message()));
            }
        }
        one_line(whole.message())
    })
}

impl RawKind {
    fn from_table(table: &toml::Table) -> Result<RawKind, String> {
        // The kind's name for messages, read leniently: the strict checks follow.
        let prefix = match table.get("kind").and_then(|v| v.as_str()) {
            Some(name) => format!("kind {name:?}"),
            None => "kind file".to_string(),
        };
        read_table(table, KIND_KEYS).map_err(|e| format!("{prefix}: {e}"))
    }

    fn into_kind(self) -> Result<Kind, String> {
        let name = self
            .kind
            .ok_or("kind file: kind: missing (the kind's name, e.g. kind = \"app\")")?;
        check_kind_name(&name).map_err(|e| format!("kind file: kind: {e}"))?;
        let at = |key: &str, msg: String| format!("kind {name:?}: {key}: {msg}");

        let initial = self
            .initial
            .ok_or_else(|| at("initial", "missing (the state a new resource enters)".into()))?;
        let provider = self.provider.ok_or_else(|| {
            at(
                "provider",
                "missing (the provider of the work states, e.g. exec)".into(),
            )
        })?;
        if provider.is_empty() {
            return Err(at(
                "provider",
                "empty (the provider of the work states, e.g. exec)".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for key in &self.required {
            if key.trim().is_empty() {
                return Err(at("required", "empty spec key".into()));
            }
            if !seen.insert(key.as_str()) {
                return Err(at("required", format!("spec key {key:?} listed twice")));
            }
        }
        if self.states.is_empty() {
            return Err(at(
                "states",
                "a kind needs at least one state ([states.NAME] tables)".into(),
            ));
        }

        // Each state on its own: names, keys, and the rules of its sort.
        let mut states = BTreeMap::new();
        for (state_name, value) in &self.states {
            let st = |key: &str, msg: String| format!("kind {name:?}: state {state_name:?}: {key}: {msg}");
            check_state_name(state_name).map_err(|e| format!("kind {name:?}: state {state_name:?}: {e}"))?;
            let table = value.as_table().ok_or_else(|| {
                format!(
                    "kind {name:?}: state {state_name:?}: expected a table, found {}",
                    value.type_str()
                )
            })?;
            if let Some(run) = table.get("run").filter(|v| v.is_table()) {
                return Err(st("run", unresolved_run_file(run)));
            }
            let raw: RawState =
                read_table(table, STATE_KEYS).map_err(|e| format!("kind {name:?}: state {state_name:?}: {e}"))?;
            let state = raw.into_state().map_err(|(key, msg)| st(key, msg))?;
            states.insert(state_name.clone(), state);
        }

        // Every name a state or key gives must be a state.
        if !states.contains_key(&initial) {
            return Err(at("initial", format!("unknown state {initial:?}")));
        }
        for (state_name, state) in &states {
            for (key, target) in state.targets() {
                if !states.contains_key(target) {
                    return Err(format!(
                        "kind {name:?}: state {state_name:?}: {key}: unknown state {target:?}"
                    ));
                }
            }
        }

        // Every state must be reachable from the initial state.
        let mut reached = BTreeSet::from([initial.as_str()]);
        let mut queue = VecDeque::from([initial.as_str()]);
        while let Some(current) = queue.pop_front() {
            for (_, target) in states[current].targets() {
                if reached.insert(target) {
                    queue.push_back(target);
                }
            }
        }
        if let Some(unreached) = states.keys().find(|s| !reached.contains(s.as_str())) {
            return Err(format!(
                "kind {name:?}: state {unreached:?}: unreachable: no next, fail, cancel or on leads to it \
                 from the initial state {initial:?}"
            ));
        }

        Ok(Kind {
            name,
            initial,
            provider,
            required: self.required,
            states,
        })
    }
}

impl RawState {
    /// Converts and checks one state; the error is `(key, message)`.
    fn into_state(self) -> Result<State, (&'static str, String)> {
        if self.is_final && self.work {
            return Err(("final", "a final state cannot be a work state".into()));
        }
        if self.is_final && !self.on.is_empty() {
            return Err(("on", "final state with events: a final state takes no events".into()));
        }
        if self.work {
            if self.next.is_none() {
                return Err((
                    "next",
                    "missing: a work state must say where a successful step leads".into(),
                ));
            }
            if self.fail.is_none() {
                return Err((
                    "fail",
                    "missing: a work state must say where a failed step leads".into(),
                ));
            }
            if !self.on.is_empty() {
                return Err((
                    "on",
                    "a work state takes no events: it moves on by next, fail and cancel".into(),
                ));
            }
        } else {
            let only_work = [
                ("next", self.next.is_some()),
                ("fail", self.fail.is_some()),
                ("cancel", self.cancel.is_some()),
                ("timeout", self.timeout.is_some()),
                ("run", self.run.is_some()),
                ("step", self.step.is_some()),
            ];
            if let Some((key, _)) = only_work.into_iter().find(|(_, set)| *set) {
                return Err((key, "only a work state (work = true) may have it".into()));
            }
            if !self.is_final && self.on.is_empty() {
                return Err(("on", "dead end: takes no events and is not final".into()));
            }
        }
        for event in self.on.keys() {
            check_event_name(event).map_err(|e| ("on", e))?;
            if event == CREATE_EVENT {
                return Err((
                    "on",
                    format!("event {CREATE_EVENT:?} is reserved (it is the event of a resource's first run)"),
                ));
            }
        }
        let timeout = match self.timeout {
            None => None,
            Some(t) if (1..=MAX_TIMEOUT_SECS as i64).contains(&t) => Some(t as u64),
            Some(t) => {
                return Err((
                    "timeout",
                    format!("{t} is out of range: give 1 to {MAX_TIMEOUT_SECS} seconds (7 days)"),
                ))
            }
        };
        Ok(State {
            work: self.work,
            next: self.next,
            fail: self.fail,
            cancel: self.cancel,
            on: self.on,
            is_final: self.is_final,
            timeout,
            run: self.run,
            step: self.step,
        })
    }
}

/// The names and sources of the built-in kinds.
pub const BUILTIN: &[(&str, &str)] = &[
    ("image", include_str!("../../kinds/image.toml")),
    ("cluster", include_str!("../../kinds/cluster.toml")),
    ("service", include_str!("../../kinds/service.toml")),
    ("opsd-cluster", include_str!("../../kinds/opsd-cluster.toml")),
];

/// A built-in kind by name.
pub fn builtin(name: &str) -> Option<Kind> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, src)| Kind::parse(src).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_kinds::{DB_BACKUP, DESIGN_EXAMPLE, SMALL_APP as APP};

    fn err(source: &str) -> String {
        match Kind::parse(source) {
            Ok(k) => panic!("parsed, expected an error: {k:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the error starts with `kind "app": state "STATE": KEY:`.
    fn assert_names(e: &str, state: &str, key: &str) {
        let prefix = format!("kind \"app\": state \"{state}\": {key}:");
        assert!(e.starts_with(&prefix), "{e:?} does not start with {prefix:?}");
    }

    #[test]
    fn the_builtin_kinds_parse() {
        for (name, source) in BUILTIN {
            let kind = Kind::parse(source).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(kind.name, *name);
            let provider = match *name {
                "service" => "service",
                "opsd-cluster" => "docker",
                _ => "local",
            };
            assert_eq!(kind.provider, provider);
            assert_eq!(builtin(name), Some(kind));
        }
        assert_eq!(builtin("nope"), None);

        let image = builtin("image").unwrap();
        assert_eq!(image.initial, "pending");
        assert_eq!(image.required, vec!["source"]);
        let names: Vec<&str> = image.states.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["building", "built", "destroyed", "destroying", "failed", "pending"]
        );
        assert_eq!(image.states["built"].event_names(), ["destroy", "rebuild"]);
        assert_eq!(image.states["failed"].event_names(), ["destroy", "retry"]);
        assert_eq!(image.states["built"].on["rebuild"], "pending");
        assert!(image.state("destroyed").unwrap().is_final);
        let building = image.state("building").unwrap();
        assert!(building.work);
        assert_eq!(building.next.as_deref(), Some("built"));
        assert_eq!(image.cancel_target(building), Some("failed"));
        assert_eq!(building.timeout_secs(), DEFAULT_TIMEOUT_SECS);
        assert_eq!(building.step.as_deref(), Some("build_image"));

        let cluster = builtin("cluster").unwrap();
        assert_eq!(cluster.initial, "pending");
        assert_eq!(cluster.required, vec!["image", "size"]);
        assert_eq!(cluster.states.len(), 9);
        assert_eq!(cluster.states["running"].event_names(), ["destroy", "stop", "verify"]);
        assert_eq!(cluster.state("pending").unwrap().next.as_deref(), Some("verifying"));
        assert_eq!(
            cluster.state("verifying").unwrap().step.as_deref(),
            Some("verify_machines")
        );
        assert_eq!(cluster.states["stopped"].event_names(), ["destroy", "start"]);
        assert_eq!(cluster.states["stopped"].on["start"], "starting");
        assert_eq!(cluster.state("starting").unwrap().next.as_deref(), Some("verifying"));
        assert_eq!(cluster.state("stopping").unwrap().next.as_deref(), Some("stopped"));
        assert!(cluster.state("destroyed").unwrap().is_final);
        assert_eq!(cluster.states["stopping"].step.as_deref(), Some("stop_machines"));
    }

    #[test]
    fn the_design_example_parses() {
        let kind = Kind::parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(kind.name, "image");
        assert!(kind.required.is_empty());
        assert_eq!(kind.states.len(), 6);
    }

    #[test]
    fn a_valid_exec_kind_with_three_work_states_parses() {
        let kind = Kind::parse(DB_BACKUP).unwrap();
        assert_eq!(kind.provider, "exec");
        assert_eq!(kind.required, ["database", "bucket"]);
        let uploading = kind.state("uploading").unwrap();
        assert_eq!(uploading.timeout, Some(604800));
        assert_eq!(kind.cancel_target(uploading), Some("cleaning"));
        assert!(uploading.run.as_deref().unwrap().contains("upload dump.sql"));
        let dumping = kind.state("dumping").unwrap();
        assert_eq!(dumping.timeout_secs(), 600);
        assert_eq!(kind.cancel_target(dumping), Some("failed"));
        assert_eq!(kind.state("done").unwrap().event_names(), ["again", "clean_up"]);
        assert_eq!(kind.states["dumping"].event_names(), Vec::<&str>::new());
    }

    #[test]
    fn the_app_fixture_parses() {
        let kind = Kind::parse(APP).unwrap();
        assert_eq!(kind.name, "app");
        assert_eq!(kind.states.len(), 3);
    }

    #[test]
    fn a_kind_survives_serialization() {
        let kind = builtin("cluster").unwrap();
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), kind);
    }

    #[test]
    fn a_toml_syntax_error_names_the_line() {
        let e = err("kind = \"app\"\ninitial = \"a\"\nprovider = = \"local\"\n");
        assert!(e.starts_with("kind file: line 3: "), "{e}");
        assert!(!e.contains('\n'), "{e:?}");
    }

    #[test]
    fn a_type_error_names_the_key() {
        let e = err(&APP.replace("work = true", "work = \"yes\""));
        assert_names(&e, "building", "work");
        assert!(e.contains("string"), "{e}");
        let e = err(&APP.replace("provider = \"local\"", "provider = 1"));
        assert!(e.starts_with("kind \"app\": provider: "), "{e}");
        let e = err(&APP.replace("{ rebuild = \"building\" }", "\"building\""));
        assert_names(&e, "built", "on");
        let e = err("kind = \"app\"\ninitial = \"a\"\nprovider = \"local\"\nstates = 3\n");
        assert!(e.starts_with("kind \"app\": states: "), "{e}");
        let e = err(&format!("{APP}\n[states]\nloose = 1\n"));
        assert!(e.starts_with("kind \"app\": state \"loose\": expected a table"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&APP.replace("next = \"built\"", "nxt = \"built\""));
        assert_names(&e, "building", "nxt");
        assert!(e.contains("unknown key"), "{e}");
        let e = err(&format!("colour = \"blue\"\n{APP}"));
        assert!(e.starts_with("kind \"app\": colour: unknown key"), "{e}");
    }

    #[test]
    fn missing_top_level_keys_are_named() {
        let e = err(&APP.replace("kind = \"app\"", ""));
        assert!(e.starts_with("kind file: kind: missing"), "{e}");
        let e = err(&APP.replace("initial = \"building\"", ""));
        assert!(e.starts_with("kind \"app\": initial: missing"), "{e}");
        let e = err(&APP.replace("provider = \"local\"", ""));
        assert!(e.starts_with("kind \"app\": provider: missing"), "{e}");
        let e = err("kind = \"app\"\ninitial = \"a\"\nprovider = \"local\"\n");
        assert!(e.starts_with("kind \"app\": states: "), "{e}");
    }

    #[test]
    fn the_kind_name_is_checked() {
        for bad in ["App", "1app", "", "_app", "a.b", &"a".repeat(65)] {
            let e = err(&APP.replace("kind = \"app\"", &format!("kind = {bad:?}")));
            assert!(e.starts_with("kind file: kind: invalid kind name"), "{bad}: {e}");
        }
        let ok = APP.replace("kind = \"app\"", &format!("kind = \"a-b_1{}\"", "x".repeat(59)));
        Kind::parse(&ok).unwrap();
    }

    #[test]
    fn the_provider_is_opaque_to_the_domain() {
        // Which providers exist is the API's question (each node's build
        // knows its own); apply must give every node the same answer.
        let kind = Kind::parse(&APP.replace("provider = \"local\"", "provider = \"docker\"")).unwrap();
        assert_eq!(kind.provider, "docker");
        let e = err(&APP.replace("provider = \"local\"", "provider = \"\""));
        assert!(e.starts_with("kind \"app\": provider: empty"), "{e}");
    }

    #[test]
    fn run_and_step_are_kept_for_the_provider() {
        let kind = Kind::parse(&APP.replace(
            "fail = \"failed\"\n",
            "fail = \"failed\"\nrun = \"make\"\nstep = \"build\"\n",
        ))
        .unwrap();
        let building = kind.state("building").unwrap();
        assert_eq!(building.run.as_deref(), Some("make"));
        assert_eq!(building.step.as_deref(), Some("build"));
        let e = err(&APP.replace("fail = \"failed\"\n", "fail = \"failed\"\nstep = 1\n"));
        assert_names(&e, "building", "step");
    }

    #[test]
    fn an_unread_run_file_is_refused_naming_the_state_and_key() {
        let e = err(&APP.replace(
            "fail = \"failed\"\n",
            "fail = \"failed\"\nrun = { file = \"deploy.sh\" }\n",
        ));
        assert_names(&e, "building", "run");
        assert!(e.contains("{ file = \"deploy.sh\" } was not read"), "{e}");
        assert!(e.contains("opsctl kinds apply"), "{e}");
        let e = err(&APP.replace("fail = \"failed\"\n", "fail = \"failed\"\nrun = { path = 1 }\n"));
        assert_names(&e, "building", "run");
    }

    #[test]
    fn required_keys_are_checked() {
        let e = err(&APP.replace(
            "provider = \"local\"",
            "provider = \"local\"\nrequired = [\"a\", \"a\"]",
        ));
        assert!(e.starts_with("kind \"app\": required: "), "{e}");
        let e = err(&APP.replace("provider = \"local\"", "provider = \"local\"\nrequired = [\"\"]"));
        assert!(e.starts_with("kind \"app\": required: "), "{e}");
    }

    #[test]
    fn initial_must_name_a_state() {
        let e = err(&APP.replace("initial = \"building\"", "initial = \"nope\""));
        assert_eq!(e, "kind \"app\": initial: unknown state \"nope\"");
    }

    #[test]
    fn every_target_must_name_a_state() {
        let e = err(&APP.replace("next = \"built\"", "next = \"bilt\""));
        assert_eq!(e, "kind \"app\": state \"building\": next: unknown state \"bilt\"");
        let e = err(&APP.replace("fail = \"failed\"", "fail = \"fialed\""));
        assert_names(&e, "building", "fail");
        assert!(e.contains("\"fialed\""), "{e}");
        let e = err(&APP.replace("fail = \"failed\"", "fail = \"failed\"\ncancel = \"gone\""));
        assert_names(&e, "building", "cancel");
        let e = err(&APP.replace("{ retry = \"building\" }", "{ retry = \"biulding\" }"));
        assert_eq!(
            e,
            "kind \"app\": state \"failed\": on.retry: unknown state \"biulding\""
        );
    }

    #[test]
    fn a_work_state_needs_next_and_fail_and_takes_no_events() {
        let e = err(&APP.replace("next = \"built\"\n", ""));
        assert_names(&e, "building", "next");
        let e = err(&APP.replace("fail = \"failed\"\n", ""));
        assert_names(&e, "building", "fail");
        let e = err(&APP.replace("fail = \"failed\"\n", "fail = \"failed\"\non = { poke = \"built\" }\n"));
        assert_names(&e, "building", "on");
        assert!(e.contains("work state takes no events"), "{e}");
    }

    #[test]
    fn a_stable_state_has_no_work_keys() {
        for (key, line) in [
            ("next", "next = \"building\""),
            ("fail", "fail = \"failed\""),
            ("cancel", "cancel = \"failed\""),
            ("timeout", "timeout = 10"),
            ("run", "run = \"true\""),
            ("step", "step = \"build\""),
        ] {
            let e = err(&APP.replace("[states.built]\n", &format!("[states.built]\n{line}\n")));
            assert_names(&e, "built", key);
            assert!(e.contains("only a work state"), "{e}");
        }
    }

    #[test]
    fn a_final_state_is_not_work_and_takes_no_events() {
        let e = err(&APP.replace(
            "[states.building]\nwork = true\n",
            "[states.building]\nwork = true\nfinal = true\n",
        ));
        assert_names(&e, "building", "final");
        let e = err(&APP.replace("[states.built]\n", "[states.built]\nfinal = true\n"));
        assert_names(&e, "built", "on");
        assert!(e.contains("final state with events"), "{e}");
    }

    #[test]
    fn a_stable_state_without_events_is_a_dead_end() {
        let e = err(&APP.replace("on = { rebuild = \"building\" }", ""));
        assert_eq!(
            e,
            "kind \"app\": state \"built\": on: dead end: takes no events and is not final"
        );
        let e = err(&APP.replace("on = { rebuild = \"building\" }", "on = {}"));
        assert_names(&e, "built", "on");
        Kind::parse(&APP.replace("on = { rebuild = \"building\" }", "final = true")).unwrap();
    }

    #[test]
    fn every_state_must_be_reachable() {
        let e = err(&format!("{APP}\n[states.orphan]\nfinal = true\n"));
        assert!(e.starts_with("kind \"app\": state \"orphan\": unreachable: "), "{e}");
        assert!(e.contains("initial state \"building\""), "{e}");
        // Reachable through a cancel target alone is enough.
        let ok = format!(
            "{}\n[states.orphan]\nfinal = true\n",
            APP.replace("fail = \"failed\"", "fail = \"failed\"\ncancel = \"orphan\"")
        );
        Kind::parse(&ok).unwrap();
    }

    #[test]
    fn event_names_are_checked_and_create_is_reserved() {
        for bad in ["Retry", "re try", "\"\"", &"e".repeat(65)] {
            let key = if bad.starts_with('"') {
                bad.to_string()
            } else {
                format!("{bad:?}")
            };
            let e = err(&APP.replace("{ retry = \"building\" }", &format!("{{ {key} = \"building\" }}")));
            assert_names(&e, "failed", "on");
            assert!(e.contains("invalid event name"), "{bad}: {e}");
        }
        let e = err(&APP.replace("{ retry = \"building\" }", "{ create = \"building\" }"));
        assert_names(&e, "failed", "on");
        assert!(e.contains("\"create\" is reserved"), "{e}");
    }

    #[test]
    fn state_names_are_checked() {
        let e = err(&format!("{}\n[states.Broken]\nfinal = true\n", APP));
        assert!(
            e.starts_with("kind \"app\": state \"Broken\": invalid state name"),
            "{e}"
        );
        let long = "s".repeat(65);
        let e = err(&format!("{APP}\n[states.{long}]\nfinal = true\n"));
        assert!(
            e.starts_with(&format!("kind \"app\": state \"{long}\": invalid state name")),
            "{e}"
        );
    }

    #[test]
    fn timeouts_are_between_a_second_and_seven_days() {
        for bad in ["0", "-5", "604801"] {
            let e = err(&APP.replace("fail = \"failed\"\n", &format!("fail = \"failed\"\ntimeout = {bad}\n")));
            assert_names(&e, "building", "timeout");
            assert!(e.contains("7 days"), "{e}");
        }
        let e = err(&APP.replace("fail = \"failed\"\n", "fail = \"failed\"\ntimeout = 1.5\n"));
        assert_names(&e, "building", "timeout");
        let kind = Kind::parse(&APP.replace("fail = \"failed\"\n", "fail = \"failed\"\ntimeout = 1\n")).unwrap();
        assert_eq!(kind.state("building").unwrap().timeout, Some(1));
    }
}
