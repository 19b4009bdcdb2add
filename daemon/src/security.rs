//! The bootstrap admin token: made by the node that bootstraps a cluster,
//! written to `<data-dir>/admin.token` (mode 0600) before `InitSecurity`
//! (which carries only its hash) is proposed, and proposed again by a
//! leader that finds the file but no security in its state (a crash between
//! the write and the proposal).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use opsd_cluster::ClusterNode;
use tracing::{info, warn};

use crate::domain::security::{self as sec};
use crate::domain::{decode_outcome, Command, Outcome};

/// The admin token file in the bootstrap node's data dir.
pub const TOKEN_FILE: &str = "admin.token";

/// Makes the admin token and writes it to `data_dir/admin.token` (mode
/// 0600, atomically: a temporary file renamed into place). Returns its id
/// and the SHA-256 of its secret.
pub fn write_admin_token(data_dir: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let (id, secret) = sec::new_token_secret().map_err(|e| anyhow!(e))?;
    let path = data_dir.join(TOKEN_FILE);
    let temp = data_dir.join(format!("{TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("writing {}", temp.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{}", sec::token_text(&id, &secret)).with_context(|| format!("writing {}", temp.display()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, &path).with_context(|| format!("renaming {} into place", temp.display()))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    info!(path = %path.display(), "wrote the admin token (mode 0600); take it off this node and make narrower tokens");
    Ok((id, sec::secret_hash(&secret)))
}

/// The id and secret hash of the admin token in `data_dir`, if it holds one.
pub fn read_admin_token(data_dir: &Path) -> Option<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(data_dir.join(TOKEN_FILE)).ok()?;
    let (id, secret) = sec::parse_token(&text).ok()?;
    Some((id, sec::secret_hash(&secret)))
}

/// One attempt to initialise security from `data_dir`'s admin token:
/// `Ok(true)` once the state holds security (whoever initialised it).
async fn try_init(node: &ClusterNode, data_dir: &Path) -> Result<bool, String> {
    if sec::initialised(&node.reader().view()).map_err(|e| e.to_string())? {
        return Ok(true);
    }
    let Some((id, hash)) = read_admin_token(data_dir) else {
        return Ok(false);
    };
    let cmd = Command::InitSecurity {
        admin_token_id: id,
        admin_token_hash: hash,
        at_ms: crate::engine::now_ms(),
    };
    let (_, answer) = crate::propose::replicate(node, &cmd).await.map_err(|e| e.to_string())?;
    match decode_outcome(&answer)? {
        Outcome::SecurityChanged { .. } => {
            info!("security initialised: the admin token in the data dir is the admin's");
            Ok(true)
        }
        Outcome::SecurityUnchanged => Ok(true),
        other => Err(format!("{other:?}")),
    }
}

/// At bootstrap, before the client API is served: proposes `InitSecurity`
/// until it is applied, so that the admin token works from the first request.
pub async fn init_at_bootstrap(node: &ClusterNode, data_dir: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match try_init(node, data_dir).await {
            Ok(true) => return Ok(()),
            Ok(false) => {
                return Err(anyhow!(
                    "{}: the admin token is missing",
                    data_dir.join(TOKEN_FILE).display()
                ))
            }
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(anyhow!("initialising security: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Until the state holds security: whenever this node leads and its data
/// dir holds `admin.token`, proposes `InitSecurity` with its hash (a node
/// that crashed between writing the token and proposing it). A leader
/// without the file (a cluster bootstrapped by a build before security)
/// writes one first, so that such a cluster gets an admin instead of
/// locking everyone out.
pub fn spawn_initialiser(node: ClusterNode, data_dir: PathBuf) {
    let leadership = node.leadership();
    tokio::spawn(async move {
        loop {
            if node.is_removed() {
                return;
            }
            let leading = leadership.borrow().is_some();
            if leading || sec::initialised(&node.reader().view()).unwrap_or(false) {
                match try_init(&node, &data_dir).await {
                    Ok(true) => return,
                    Ok(false) if leading => {
                        warn!("this cluster has no users yet (made before security): making its admin token");
                        if let Err(e) = write_admin_token(&data_dir) {
                            warn!("making the admin token: {e:#}; retrying");
                        }
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => warn!("initialising security: {e}; retrying"),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_written_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (id, hash) = write_admin_token(dir.path()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_admin_token(dir.path()), Some((id, hash)));
        assert!(!dir.path().join(format!("{TOKEN_FILE}.tmp")).exists());
    }

    #[tokio::test]
    async fn a_leader_with_the_token_file_and_no_security_proposes_it() {
        use std::sync::Arc;

        use crate::domain::{Domain, TABLES};
        // The crash between writing the file and proposing: a node whose
        // state has no security yet, and the file in its data dir.
        let dir = tempfile::tempdir().unwrap();
        let tables = TABLES.iter().map(|t| t.to_string()).collect();
        let node = opsd_cluster::testing::start_single_node(dir.path(), tables, Arc::new(Domain))
            .await
            .unwrap();
        assert!(!sec::initialised(&node.reader().view()).unwrap());
        let tokens = tempfile::tempdir().unwrap();
        let (id, hash) = write_admin_token(tokens.path()).unwrap();
        spawn_initialiser(node.clone(), tokens.path().to_path_buf());
        let started = std::time::Instant::now();
        while !sec::initialised(&node.reader().view()).unwrap() {
            assert!(started.elapsed() < Duration::from_secs(20), "never initialised");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = sec::read_token(&node.reader().view(), &id).unwrap().unwrap();
        assert_eq!((token.user.as_str(), token.secret_sha256), (sec::ADMIN, hash));
        // Once initialised, nothing more is proposed.
        assert!(try_init(&node, tokens.path()).await.unwrap());
        node.shutdown().await;
    }

    #[tokio::test]
    async fn a_leader_of_a_cluster_made_before_security_makes_the_admin_token() {
        use std::sync::Arc;

        use crate::domain::{Domain, TABLES};
        // No file and no security: the leader writes the file, then proposes it.
        let dir = tempfile::tempdir().unwrap();
        let tables = TABLES.iter().map(|t| t.to_string()).collect();
        let node = opsd_cluster::testing::start_single_node(dir.path(), tables, Arc::new(Domain))
            .await
            .unwrap();
        let tokens = tempfile::tempdir().unwrap();
        spawn_initialiser(node.clone(), tokens.path().to_path_buf());
        let started = std::time::Instant::now();
        while !sec::initialised(&node.reader().view()).unwrap() {
            assert!(started.elapsed() < Duration::from_secs(20), "never initialised");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (id, hash) = read_admin_token(tokens.path()).expect("the admin token written");
        let token = sec::read_token(&node.reader().view(), &id).unwrap().unwrap();
        assert_eq!((token.user.as_str(), token.secret_sha256), (sec::ADMIN, hash));
        node.shutdown().await;
    }
}
