//! `opsctl users|roles|tokens ...` and `opsctl whoami`: who may call the
//! cluster and what they may do (the `opsd.v1.Security` service), and how
//! opsctl finds the token it sends.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use opsd_client::Nodes;
use opsd_proto::prost_types::Timestamp;
use opsd_proto::v1::{
    CreateTokenRequest, CreateUserRequest, DeleteRoleRequest, DeleteUserRequest, GetRoleRequest, GetTokenRequest,
    GetUserRequest, ListRolesRequest, ListTokensRequest, ListUsersRequest, PutRoleRequest, RevokeTokenRequest, Role,
    Token, User, WhoAmIRequest,
};
use serde_json::{json, Value};

use crate::render::{dash_if_empty, key_values, one_line, rfc3339_millis, write_json, OutputFormat, Printer, Table};

/// The token file `make run` leaves in the current directory.
pub const DEFAULT_TOKEN_FILE: &str = "opsd-data/admin.token";

/// Where opsctl's token comes from: `--token`/`OPSD_TOKEN`, else
/// `--token-file`/`OPSD_TOKEN_FILE`, else `./opsd-data/admin.token` if it
/// exists, else none. A token file others may read gets a warning.
pub fn find_token(token: Option<String>, token_file: Option<PathBuf>) -> Result<Option<String>> {
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(token.trim().to_string()));
    }
    let (path, given) = match token_file {
        Some(path) => (path, true),
        None => (PathBuf::from(DEFAULT_TOKEN_FILE), false),
    };
    if !given && !path.exists() {
        return Ok(None);
    }
    let text = read_token_file(&path)?;
    Ok(Some(text))
}

fn read_token_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("token file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "warning: token file {} may be read by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("token file {}", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(anyhow!("token file {}: empty", path.display()));
    }
    Ok(text)
}

/// Commands on users.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user holding existing roles.
    #[command(after_long_help = "Examples:\n  opsctl users create ci --role deployer")]
    Create {
        /// The user's name (letters, digits, '-', '_', '.', '@').
        name: String,
        /// A role to hold; repeat for more.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// List the users: name, roles, tokens.
    Ls,
    /// Show one user.
    Show {
        /// The user's name.
        name: String,
    },
    /// Delete a user and revoke its tokens (never the last admin).
    Rm {
        /// The user's name.
        name: String,
    },
}

/// Commands on roles.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Create a role, or replace its rules.
    ///
    /// A rule is VERB[,VERB...]:PATTERN. Verbs: read, write, do, cancel,
    /// reveal, admin, or * for all. A pattern is an object path
    /// (settings/KEY, kinds/KIND, resources/KIND/NAME, cluster, security),
    /// a prefix ending in *, or * for everything.
    #[command(after_long_help = "Examples:\n  \
        opsctl roles create deployer --rule 'do,read:resources/app/*' --rule 'read:kinds/app'\n  \
        opsctl roles create viewer --rule 'read:*'")]
    Create {
        /// The role's name.
        name: String,
        /// A rule; repeat for more.
        #[arg(long = "rule", value_name = "RULE", required = true)]
        rules: Vec<String>,
    },
    /// List the roles: name, rules, users.
    Ls,
    /// Show one role.
    Show {
        /// The role's name.
        name: String,
    },
    /// Remove a role nobody holds (never `admin`).
    Rm {
        /// The role's name.
        name: String,
    },
}

/// Commands on tokens.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a token for a user and print it, this once: only a hash of its
    /// secret is kept. With --output json, {"token": TEXT, "id", "user",
    /// "created_at", "expires_at", "description"}.
    #[command(after_long_help = "Examples:\n  \
        opsctl tokens create --user ci --ttl 30d --description 'CI deploys' > ci.token\n  \
        chmod 600 ci.token")]
    Create {
        /// The user the token acts as.
        #[arg(long)]
        user: String,
        /// How long it works, like 1h or 30d; without it, until revoked.
        #[arg(long, value_name = "DURATION", value_parser = crate::spec::parse_since)]
        ttl: Option<std::time::Duration>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (of one user with --user): id, user, created, expires,
    /// description. Never secrets.
    Ls {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
    },
    /// Show one token by id.
    Show {
        /// The token's id (the part after `opsd1.`).
        id: String,
    },
    /// Revoke a token: every node refuses it once it applies the revoke,
    /// and streams opened with it end.
    Rm {
        /// The token's id.
        id: String,
    },
}

fn time_text(t: Option<&Timestamp>) -> Option<String> {
    t.and_then(|t| rfc3339_millis(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000))
}

fn time_json(t: Option<&Timestamp>) -> Value {
    time_text(t).map_or(Value::Null, Value::String)
}

fn user_json(u: &User) -> Value {
    json!({"name": u.name, "roles": u.roles, "token_ids": u.token_ids, "created_at": time_json(u.created_at.as_ref())})
}

fn role_json(r: &Role) -> Value {
    json!({"name": r.name, "rules": r.rules, "builtin": r.builtin, "users": r.users})
}

fn token_json(t: &Token) -> Value {
    json!({
        "id": t.id, "user": t.user, "created_at": time_json(t.created_at.as_ref()),
        "expires_at": time_json(t.expires_at.as_ref()), "description": t.description,
    })
}

fn print_users(printer: Printer, users: &[User]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        return write_json(&mut out, &users.iter().map(user_json).collect());
    }
    let mut table = Table::new(&["NAME", "ROLES", "TOKENS"]);
    for u in users {
        table.row(vec![
            one_line(&u.name, None),
            dash_if_empty(one_line(&u.roles.join(","), None)),
            u.token_ids.len().to_string(),
        ]);
    }
    table.write(&mut out)
}

fn print_user(printer: Printer, u: &User) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        return write_json(&mut out, &user_json(u));
    }
    key_values(&[
        ("name", one_line(&u.name, None)),
        ("roles", dash_if_empty(one_line(&u.roles.join(", "), None))),
        ("tokens", dash_if_empty(u.token_ids.join(", "))),
        (
            "created",
            dash_if_empty(time_text(u.created_at.as_ref()).unwrap_or_default()),
        ),
    ])
    .write_rows(&mut out)
}

fn print_roles(printer: Printer, roles: &[Role]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        return write_json(&mut out, &roles.iter().map(role_json).collect());
    }
    let mut table = Table::new(&["NAME", "RULES", "USERS", "BUILTIN"]);
    for r in roles {
        table.row(vec![
            one_line(&r.name, None),
            one_line(&r.rules.join(" "), None),
            dash_if_empty(one_line(&r.users.join(","), None)),
            if r.builtin { "yes" } else { "no" }.to_string(),
        ]);
    }
    table.write(&mut out)
}

fn print_role(printer: Printer, r: &Role) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        return write_json(&mut out, &role_json(r));
    }
    key_values(&[
        ("name", one_line(&r.name, None)),
        ("rules", one_line(&r.rules.join(" "), None)),
        ("users", dash_if_empty(one_line(&r.users.join(", "), None))),
        ("builtin", if r.builtin { "yes" } else { "no" }.to_string()),
    ])
    .write_rows(&mut out)
}

fn print_tokens(printer: Printer, tokens: &[Token]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        return write_json(&mut out, &tokens.iter().map(token_json).collect());
    }
    let mut table = Table::new(&["ID", "USER", "CREATED", "EXPIRES", "DESCRIPTION"]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            one_line(&t.user, None),
            dash_if_empty(time_text(t.created_at.as_ref()).unwrap_or_default()),
            time_text(t.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
            dash_if_empty(one_line(&t.description, Some(40))),
        ]);
    }
    table.write(&mut out)
}

fn print_token(printer: Printer, t: &Token) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        return write_json(&mut out, &token_json(t));
    }
    key_values(&[
        ("id", t.id.clone()),
        ("user", one_line(&t.user, None)),
        (
            "created",
            dash_if_empty(time_text(t.created_at.as_ref()).unwrap_or_default()),
        ),
        (
            "expires",
            time_text(t.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
        ),
        ("description", dash_if_empty(one_line(&t.description, None))),
    ])
    .write_rows(&mut out)
}

/// Runs one `opsctl users ...` command.
pub async fn users(command: UsersCommand, nodes: &Nodes, printer: Printer) -> Result<()> {
    match command {
        UsersCommand::Create { name, roles } => {
            let request = CreateUserRequest { name, roles };
            let user = nodes
                .write_with(&request, |mut api, r| async move { api.security.create_user(r).await })
                .await?;
            print_user(printer, &user)?;
        }
        UsersCommand::Ls => {
            let answer = nodes
                .call(|mut api| async move { api.security.list_users(ListUsersRequest {}).await })
                .await?;
            print_users(printer, &answer.users)?;
        }
        UsersCommand::Show { name } => {
            let request = GetUserRequest { name };
            let user = nodes
                .call_with(&request, |mut api, r| async move { api.security.get_user(r).await })
                .await?;
            print_user(printer, &user)?;
        }
        UsersCommand::Rm { name } => {
            let request = DeleteUserRequest { name };
            let user = nodes
                .write_with(&request, |mut api, r| async move { api.security.delete_user(r).await })
                .await?;
            deleted(printer, "user", &user.name, user_json(&user))?;
        }
    }
    Ok(())
}

/// Runs one `opsctl roles ...` command.
pub async fn roles(command: RolesCommand, nodes: &Nodes, printer: Printer) -> Result<()> {
    match command {
        RolesCommand::Create { name, rules } => {
            let request = PutRoleRequest { name, rules };
            let role = nodes
                .write_with(&request, |mut api, r| async move { api.security.put_role(r).await })
                .await?;
            print_role(printer, &role)?;
        }
        RolesCommand::Ls => {
            let answer = nodes
                .call(|mut api| async move { api.security.list_roles(ListRolesRequest {}).await })
                .await?;
            print_roles(printer, &answer.roles)?;
        }
        RolesCommand::Show { name } => {
            let request = GetRoleRequest { name };
            let role = nodes
                .call_with(&request, |mut api, r| async move { api.security.get_role(r).await })
                .await?;
            print_role(printer, &role)?;
        }
        RolesCommand::Rm { name } => {
            let request = DeleteRoleRequest { name };
            let role = nodes
                .write_with(&request, |mut api, r| async move { api.security.delete_role(r).await })
                .await?;
            deleted(printer, "role", &role.name, role_json(&role))?;
        }
    }
    Ok(())
}

/// Runs one `opsctl tokens ...` command.
pub async fn tokens(command: TokensCommand, nodes: &Nodes, printer: Printer) -> Result<()> {
    match command {
        TokensCommand::Create { user, ttl, description } => {
            let request = CreateTokenRequest {
                user,
                ttl_seconds: ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
                description,
            };
            let answer = nodes
                .write_with(&request, |mut api, r| async move { api.security.create_token(r).await })
                .await?;
            let mut out = io::stdout().lock();
            if printer.format() == OutputFormat::Json {
                let mut value = answer.token.as_ref().map(token_json).unwrap_or_else(|| json!({}));
                value["token"] = Value::String(answer.secret_token.clone());
                write_json(&mut out, &value)?;
            } else {
                writeln!(out, "{}", answer.secret_token)?;
                eprintln!("(shown once: only a hash of it is kept; store it now)");
            }
        }
        TokensCommand::Ls { user } => {
            let request = ListTokensRequest {
                user: user.unwrap_or_default(),
            };
            let answer = nodes
                .call_with(&request, |mut api, r| async move { api.security.list_tokens(r).await })
                .await?;
            print_tokens(printer, &answer.tokens)?;
        }
        TokensCommand::Show { id } => {
            let request = GetTokenRequest { id };
            let token = nodes
                .call_with(&request, |mut api, r| async move { api.security.get_token(r).await })
                .await?;
            print_token(printer, &token)?;
        }
        TokensCommand::Rm { id } => {
            let request = RevokeTokenRequest { id };
            let token = nodes
                .write_with(&request, |mut api, r| async move { api.security.revoke_token(r).await })
                .await?;
            deleted(printer, "token", &token.id, token_json(&token))?;
        }
    }
    Ok(())
}

fn deleted(printer: Printer, what: &str, name: &str, value: Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        let mut value = value;
        value["deleted"] = Value::Bool(true);
        return write_json(&mut out, &value);
    }
    let verb = if what == "token" { "revoked" } else { "deleted" };
    writeln!(out, "{verb} {what} {}", one_line(name, None))
}

/// `opsctl whoami`: the token's user, roles and rules.
pub async fn whoami(nodes: &Nodes, printer: Printer) -> Result<()> {
    let answer = nodes
        .call(|mut api| async move { api.security.who_am_i(WhoAmIRequest {}).await })
        .await?;
    let mut out = io::stdout().lock();
    if printer.format() == OutputFormat::Json {
        write_json(
            &mut out,
            &json!({
                "user": answer.user, "token_id": answer.token_id, "roles": answer.roles,
                "rules": answer.rules, "expires_at": time_json(answer.expires_at.as_ref()),
            }),
        )?;
        return Ok(());
    }
    key_values(&[
        ("user", one_line(&answer.user, None)),
        ("token", dash_if_empty(answer.token_id.clone())),
        ("roles", dash_if_empty(one_line(&answer.roles.join(", "), None))),
        ("rules", dash_if_empty(one_line(&answer.rules.join(" "), None))),
        (
            "expires",
            time_text(answer.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
        ),
    ])
    .write_rows(&mut out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_token_wins_then_a_token_file() {
        assert_eq!(find_token(Some(" t ".into()), None).unwrap().as_deref(), Some("t"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "opsd1.x.y\n").unwrap();
        assert_eq!(
            find_token(None, Some(file.clone())).unwrap().as_deref(),
            Some("opsd1.x.y")
        );
        assert!(find_token(None, Some(dir.path().join("absent"))).is_err());
    }
}
