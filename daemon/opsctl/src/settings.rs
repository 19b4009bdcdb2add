//! `opsctl settings ...`: the replicated key/value settings store.

use anyhow::{Context, Result};
use clap::Subcommand;
use opsd_client::{Nodes, SettingsWatch, WatchItem};
use opsd_proto::v1::{DeleteRequest, EffectiveRequest, GetRequest, ListRequest, PutRequest};

use crate::render::Printer;
use crate::spec::ResourceRef;

/// Commands on settings. Keys are 1 to 512 bytes of printable UTF-8 without
/// whitespace; values are UTF-8 strings of at most 64 KiB.
#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Set KEY to VALUE and print the revision of the write.
    ///
    /// With --output json, prints {"revision": N, "previous": SETTING or null}.
    ///
    /// --secret marks the setting secret: steps and machines get its value
    /// as usual, but every answer (get, ls, watch, effective, the previous
    /// setting of a put or rm) shows it as `***`, and a step's log lines
    /// have it masked out. Once secret, a key stays secret through every put
    /// without --secret; `--secret=false` makes it an ordinary setting again.
    /// `settings get KEY --reveal` shows the value to a caller allowed to
    /// reveal it.
    #[command(after_long_help = "Examples:\n  \
        opsctl settings put scope/kind/app/DB_PASSWORD 'correct horse' --secret\n  \
        opsctl settings get scope/kind/app/DB_PASSWORD            # prints ***\n  \
        opsctl settings get scope/kind/app/DB_PASSWORD --reveal\n  \
        opsctl settings put scope/kind/app/DB_PASSWORD public --secret=false")]
    Put {
        /// The key to set.
        key: String,
        /// The new value (may be empty, or start with '-').
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Compare-and-set: write only if the key's current mod_revision is N
        /// (0: only if the key does not exist yet); otherwise fail with
        /// "failed precondition" and change nothing.
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
        /// Why, kept with the setting as its change_reason (audit).
        #[arg(long, default_value = "")]
        reason: String,
        /// Mark the setting secret (shown as `***`); `--secret=false` makes
        /// it ordinary again. Without it, a key keeps what it was.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        secret: Option<bool>,
    },
    /// Print the value of KEY, and nothing else.
    ///
    /// A secret setting's value prints as `***`, for every caller, unless
    /// --reveal is given (and the caller may reveal it).
    ///
    /// With --output json, prints the whole setting: key, value,
    /// create_revision, mod_revision, version, and who made the last change,
    /// why and when (changed_by, change_reason, changed_at). A missing key is an error
    /// (exit code 1).
    Get {
        /// The key to read.
        key: String,
        /// Read the answering node's state without confirming with the leader:
        /// faster and works without quorum, but may miss the latest writes.
        #[arg(long)]
        stale: bool,
        /// Print a secret setting's real value: refused (permission denied)
        /// unless the caller may reveal settings/KEY.
        #[arg(long)]
        reveal: bool,
    },
    /// List settings whose key starts with PREFIX (all settings by default), in key order.
    ///
    /// The table cuts long values; --output json prints them whole, as an
    /// array of settings. Secret settings' values show as `***`.
    Ls {
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Read the answering node's state without confirming with the leader:
        /// faster and works without quorum, but may miss the latest writes.
        #[arg(long)]
        stale: bool,
    },
    /// Delete KEY and print the revision of the delete.
    ///
    /// A missing key is an error (exit code 1). With --output json, prints
    /// {"revision": N, "previous": SETTING}.
    Rm {
        /// The key to delete.
        key: String,
        /// Compare-and-delete: delete only if the key's current mod_revision
        /// is N; otherwise fail with "failed precondition" and change nothing.
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
        /// Why, shown to watchers with the delete (audit).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stream changes to keys starting with PREFIX (all keys by default), one line each.
    ///
    /// Lines look like `PUT key=value rev=N` and `DELETE key rev=N`. With
    /// --output json, each line is one JSON object with type ("PUT" or
    /// "DELETE"), key, value (null for DELETE) and revision: this command
    /// prints a stream of JSON documents, the one exception to "one JSON
    /// document per command". Starts from the moment of the call and runs
    /// until Ctrl-C (exit code 0) or the server ends the stream. If the
    /// stream breaks (its node died, or this watcher fell too far behind),
    /// the watch goes on through the next address after a note on stderr:
    /// changes made meanwhile are printed once each, coalesced (the last
    /// value of each key changed, then the keys deleted). If no node can
    /// serve it for a minute, or the server refuses it, the error goes to
    /// stderr and the exit code is 1.
    Watch {
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Show the settings in scope of a resource: what its steps and machines
    /// get, and which key each value comes from.
    ///
    /// Settings apply to resources through three scopes, the most specific
    /// winning: `scope/global/KEY` (every resource), `scope/kind/KIND/KEY`
    /// (every resource of KIND), `scope/resource/KIND/NAME/KEY` (one
    /// resource). KEY may contain '/'. Exec steps get the merged settings as
    /// `settings` in the JSON on their stdin; machines of a local cluster get
    /// those whose key is an environment variable name in their environment
    /// (under the cluster's spec.env). The table shows KEY, VALUE and FROM
    /// (the settings key the value comes from, the one to change); with
    /// --output json, an array of {"key", "value", "source"}. A resource that
    /// does not exist is an error (exit code 1). Secret settings show as
    /// `***` (and "secret": true in JSON) unless --reveal is given.
    #[command(after_long_help = "Examples:\n  \
        opsctl settings put scope/global/LOG_LEVEL info\n  \
        opsctl settings put scope/kind/app/LOG_LEVEL debug --reason \"debugging app\"\n  \
        opsctl settings put scope/resource/app/api/db/url postgres://db:5432/api\n  \
        opsctl settings effective app/api\n  \
        opsctl --output json settings effective app/api")]
    Effective {
        /// The resource, as KIND/NAME.
        #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
        target: ResourceRef,
        /// Read the answering node's state without confirming with the leader:
        /// faster and works without quorum, but may miss the latest writes.
        #[arg(long)]
        stale: bool,
        /// Print the real values of secret settings: refused (permission
        /// denied) unless the caller may reveal every secret one in scope.
        #[arg(long)]
        reveal: bool,
    },
}

/// Runs one `opsctl settings ...` command.
pub async fn run(command: SettingsCommand, nodes: &Nodes, printer: Printer) -> Result<()> {
    match command {
        SettingsCommand::Put {
            key,
            value,
            expected_revision,
            reason,
            secret,
        } => {
            let request = PutRequest {
                key,
                value,
                expected_revision,
                reason,
                secret,
            };
            let answer = nodes
                .write_with(&request, |mut api, r| async move { api.settings.put(r).await })
                .await?;
            printer.revision(answer.revision, answer.previous.as_ref())?;
        }
        SettingsCommand::Get { key, stale, reveal } => {
            let request = GetRequest { key, stale, reveal };
            let answer = nodes
                .call_with(&request, |mut api, r| async move { api.settings.get(r).await })
                .await?;
            let setting = answer
                .setting
                .with_context(|| format!("the server answered without a setting for {:?}", request.key))?;
            printer.setting_value(&setting)?;
        }
        SettingsCommand::Ls { prefix, stale } => {
            let request = ListRequest { prefix, stale };
            let answer = nodes
                .call_with(&request, |mut api, r| async move { api.settings.list(r).await })
                .await?;
            printer.settings(&answer.settings)?;
        }
        SettingsCommand::Rm {
            key,
            expected_revision,
            reason,
        } => {
            let request = DeleteRequest {
                key,
                expected_revision,
                reason,
            };
            let answer = nodes
                .write_with(&request, |mut api, r| async move { api.settings.delete(r).await })
                .await?;
            printer.revision(answer.revision, answer.previous.as_ref())?;
        }
        SettingsCommand::Watch { prefix } => watch(prefix, nodes, printer).await?,
        SettingsCommand::Effective { target, stale, reveal } => {
            let request = EffectiveRequest {
                kind: target.kind,
                name: target.name,
                stale,
                reveal,
            };
            let answer = nodes
                .call_with(&request, |mut api, r| async move { api.settings.effective(r).await })
                .await?;
            printer.effective_settings(&answer.settings)?;
        }
    }
    Ok(())
}

/// `opsctl settings watch`: prints events until Ctrl-C or the end of the
/// stream, resuming through the next address when the stream breaks.
async fn watch(prefix: String, nodes: &Nodes, printer: Printer) -> Result<()> {
    let mut watch = SettingsWatch::open(nodes, &prefix).await?;
    // One future for the whole watch, so a Ctrl-C between two events is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            next = watch.next() => next,
            interrupted = &mut ctrl_c => {
                interrupted.context("cannot listen for Ctrl-C")?;
                return Ok(());
            }
        };
        match next.context("the watch ended")? {
            Some(WatchItem::Event(event)) => printer.watch_event(&event)?,
            Some(WatchItem::Resumed { addr, why }) => {
                eprintln!("note: the watch through {addr} broke ({why}); resumed through another node")
            }
            None => return Ok(()),
        }
    }
}
