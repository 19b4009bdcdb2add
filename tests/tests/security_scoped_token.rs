//! A token scoped by its user's role: the admin makes role `deployer`
//! (`do,read:resources/app/*`, `read:kinds/app`), user `ci` holding it, and a
//! token. With it opsctl deploys app/x and history names `ci`; everything
//! outside the role is PERMISSION_DENIED naming the verb and the object, and
//! changes nothing. A role with an unknown verb or a bad pattern is
//! INVALID_ARGUMENT and writes nothing; an expired token is refused.

use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::{access, client, kinds, Cluster, Opsctl, Options};
use serde_json::json;

/// opsctl sending `token` rather than the admin's.
struct As<'a> {
    opsctl: &'a Opsctl,
    token: &'a str,
}

impl As<'_> {
    async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.opsctl.command(args);
        cmd.env("OPSD_TOKEN", self.token);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("opsctl finished")
            .expect("opsctl ran")
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "opsctl {args:?} failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fails with PERMISSION_DENIED naming `verb` and `object`.
    async fn denied(&self, args: &[&str], verb: &str, object: &str) {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "opsctl {args:?} should fail: {stderr}");
        let expected = format!("ci may not {verb} {object}");
        assert!(
            stderr.contains(&expected) && stderr.to_lowercase().contains("permission"),
            "opsctl {args:?}: expected {expected:?} (permission denied), got: {stderr}"
        );
    }
}

#[tokio::test]
async fn security_scoped_token() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let admin = Opsctl { addr: addr.clone() };
    res::apply_kind(&addr, kinds::DEPLOYABLE_APP).await.expect("apply app");
    res::apply_kind(&addr, kinds::ONE_STEP_JOB).await.expect("apply job");
    res::create(&addr, "app", "x", json!({})).await.expect("create app/x");
    res::wait_state(&addr, "app", "x", "ready", Duration::from_secs(30)).await;
    client::put(&addr, "db/password", "s3cret")
        .await
        .expect("a setting outside the role");

    // The admin makes the role, the user and its token with opsctl.
    admin
        .json(&[
            "roles",
            "create",
            "deployer",
            "--rule",
            "do,read:resources/app/*",
            "--rule",
            "read:kinds/app",
            "--rule",
            "read:settings/app/*",
        ])
        .await;
    admin.json(&["users", "create", "ci", "--role", "deployer"]).await;
    let made = admin
        .json(&["tokens", "create", "--user", "ci", "--description", "CI deploys"])
        .await;
    let token = made["token"].as_str().expect("the token's text").to_string();
    assert!(token.starts_with("opsd1."), "{token}");
    let listed = admin.json(&["tokens", "ls", "--user", "ci"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        !listed.to_string().contains(token.split('.').nth(2).unwrap()),
        "a secret is never listed"
    );

    let ci = As {
        opsctl: &admin,
        token: &token,
    };
    let who = ci.ok(&["--output", "json", "whoami"]).await;
    let who: serde_json::Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["user"], "ci", "{who}");
    assert_eq!(who["roles"], json!(["deployer"]), "{who}");

    // What the role grants works, and the audit names ci.
    ci.ok(&["do", "app/x", "deploy", "--arg", "version=2", "--wait"]).await;
    let history = admin.json(&["history", "app/x"]).await;
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["event"].as_str(), last["principal"].as_str()),
        (Some("deploy"), Some("ci")),
        "{last}"
    );
    ci.ok(&["get", "app/x"]).await;
    ci.ok(&["history", "app/x"]).await;

    // A secret it may read shows as `***`; revealing it takes `reveal`.
    admin
        .json(&["settings", "put", "app/api-key", "k3y-value-7731", "--secret"])
        .await;
    let shown = ci.ok(&["--output", "json", "settings", "get", "app/api-key"]).await;
    assert!(
        shown.contains("***") && !shown.contains("k3y-value-7731"),
        "a secret read without reveal: {shown}"
    );
    ci.denied(
        &["settings", "get", "app/api-key", "--reveal"],
        "reveal",
        "settings/app/api-key",
    )
    .await;

    // Everything else is refused, naming the verb and the object.
    let before = admin.json(&["ls"]).await;
    ci.denied(&["create", "job/y"], "write", "resources/job/y").await;
    ci.denied(&["create", "app/y"], "write", "resources/app/y").await;
    ci.denied(&["delete", "app/x"], "write", "resources/app/x").await;
    ci.denied(&["settings", "get", "db/password"], "read", "settings/db/password")
        .await;
    ci.denied(
        &["settings", "put", "db/password", "x"],
        "write",
        "settings/db/password",
    )
    .await;
    ci.denied(&["cluster", "remove", "1"], "admin", "cluster").await;
    ci.denied(
        &["kinds", "apply", &kinds::path("noop.toml").display().to_string()],
        "write",
        "kinds/noop",
    )
    .await;
    ci.denied(&["users", "create", "eve"], "admin", "security").await;
    ci.denied(&["tokens", "create", "--user", "ci"], "admin", "security")
        .await;
    assert_eq!(
        admin.json(&["ls"]).await,
        before,
        "a refused call changed the resources"
    );
    assert_eq!(
        client::get(&addr, "db/password", false)
            .await
            .unwrap()
            .setting
            .unwrap()
            .value,
        "s3cret"
    );
    // Listings show only what the role may read.
    let seen = ci.ok(&["--output", "json", "ls"]).await;
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert!(seen.as_array().unwrap().iter().all(|r| r["kind"] == "app"), "{seen}");

    // A role with an unknown verb or a bad pattern: INVALID_ARGUMENT, nothing written.
    let roles_before = admin.json(&["roles", "ls"]).await;
    for rule in [
        "deploy:resources/app/*",
        "read:resources/*/x",
        "read:",
        "read:nowhere/x",
    ] {
        let err = admin.fails(&["roles", "create", "broken", "--rule", rule], 1).await;
        assert!(err.contains("invalid") && err.contains(rule), "rule {rule:?}: {err}");
    }
    assert_eq!(admin.json(&["roles", "ls"]).await, roles_before);
    // The built-in role cannot be changed, and the last admin not deleted.
    admin.fails(&["roles", "create", "admin", "--rule", "read:*"], 1).await;
    admin.fails(&["users", "rm", "admin"], 1).await;

    // An expired token is refused.
    let short = admin.json(&["tokens", "create", "--user", "ci", "--ttl", "1s"]).await;
    let short = short["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = As {
        opsctl: &admin,
        token: &short,
    };
    let out = expired.run(&["whoami"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("expired token"), "{stderr}");

    // Deleting the user revokes its tokens.
    admin.json(&["users", "rm", "ci"]).await;
    let out = ci.run(&["whoami"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown or revoked token"), "{stderr}");
    let _ = access::opsctl_env(&addr);
}
