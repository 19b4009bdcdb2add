//! The kinds the unit tests share, one file each under `test_kinds/`, so
//! that a test names the kind it uses instead of retyping it.

/// The example kind of the design notes (`image`): two work states, built
/// or failed, destroyed at the end.
pub const DESIGN_EXAMPLE: &str = include_str!("test_kinds/design_example.toml");

/// An exec kind (`db-backup`) with three work states, timeouts, a cancel
/// target other than its fail state, and required spec fields.
pub const DB_BACKUP: &str = include_str!("test_kinds/db_backup.toml");

/// An exec app (`app`) through its whole life: three work states on
/// creation, deploys, a pause, a cancel target, failure and retry, and
/// destruction into a final state.
pub const APP_LIFECYCLE: &str = include_str!("test_kinds/app_lifecycle.toml");

/// A small valid kind (`app`, provider `local`): the work state `building`
/// ends in `built` or `failed`, from where `rebuild` or `retry` build again.
/// Rule tests edit one line of it.
pub const SMALL_APP: &str = include_str!("test_kinds/small_app.toml");

/// [`SMALL_APP`] with provider `provider` and `building`'s extra lines
/// (its `run` script or `step`, each line ending in a newline).
pub fn small_app(provider: &str, building: &str) -> String {
    SMALL_APP
        .replace("provider = \"local\"", &format!("provider = {provider:?}"))
        .replace("fail = \"failed\"\n", &format!("fail = \"failed\"\n{building}"))
}
