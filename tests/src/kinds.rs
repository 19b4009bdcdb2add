//! The kinds the scenarios, the benchmark and the fault suite define, one
//! file each under `tests/kinds/` (named after what the kind is), so that a
//! test names the kind it uses instead of retyping it.

use std::path::PathBuf;

/// Three exec work states in a chain (`app`: fetching, building, deploying);
/// deploying version `bad` fails with status 3.
pub const THREE_STEP_APP: &str = include_str!("../kinds/three_step_app.toml");

/// The README's resource tour (`app`): a build step reporting an image, and a
/// deploy step that fails on version `bad` and can sleep long enough to be
/// cancelled.
pub const DEPLOYABLE_APP: &str = include_str!("../kinds/deployable_app.toml");

/// One work state that succeeds at once, then a final state (`job`).
pub const ONE_STEP_JOB: &str = include_str!("../kinds/one_step_job.toml");

/// Steps that misbehave (`job`, needs an `owner`): `garbage` writes outputs
/// that are not JSON, `crash` dies of SIGSEGV.
pub const MISBEHAVING_JOB: &str = include_str!("../kinds/misbehaving_job.toml");

/// A long step that can be cancelled and one that hangs past its 2 s
/// timeout (`slow`).
pub const SLOW_AND_HANGING: &str = include_str!("../kinds/slow_and_hanging.toml");

/// One work state taking about 3 s, long enough to kill a node in the middle
/// of it (`long`: `go` from `idle` or `done`).
pub const LONG_STEP: &str = include_str!("../kinds/long_step.toml");

/// One work state that succeeds at once (`noop`): one transition is one Do
/// of `go` until the resource rests in `done` again.
pub const NOOP: &str = include_str!("../kinds/noop.toml");

/// A kind whose initial state is stable (`parked`): creating a resource runs
/// nothing, so creating many measures the store, not the provider.
pub const PARKED: &str = include_str!("../kinds/parked.toml");

/// What the fault suite drives (`nemesis`): short, idempotent steps, so that
/// many runs are under way when a fault hits and a taken-over step may run
/// again.
pub const NEMESIS: &str = include_str!("../kinds/nemesis.toml");

/// One work state whose outputs are the JSON document it read on stdin
/// (`echo`: `again` reads it again).
pub const STDIN_ECHO: &str = include_str!("../kinds/stdin_echo.toml");

/// A step that prints a large log (`chatty`): a first line, `token: $TOKEN`,
/// `LINES` numbered lines of [`CHATTY_LINE_BYTES`] bytes each (see
/// [`chatty_line`]) after `PAUSE` seconds, and a last line `LINGER` seconds
/// later; `LINES`, `PAUSE`, `LINGER` and `TOKEN` are settings in scope
/// (`scope/kind/chatty/...`).
pub const CHATTY_STEP: &str = include_str!("../kinds/chatty_step.toml");

/// The bytes of one numbered line of [`CHATTY_STEP`], its newline included.
pub const CHATTY_LINE_BYTES: u64 = 100;

/// The `n`th numbered line of [`CHATTY_STEP`] (from 1), without its newline.
pub fn chatty_line(n: u64) -> String {
    format!(
        "chatty line {n:08}: {}",
        &"the quick brown fox jumps over the lazy dog ".repeat(2)[..77]
    )
}

/// The path of a kind file under `tests/kinds/`, for `opsctl kinds apply`.
pub fn path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kinds").join(file)
}
