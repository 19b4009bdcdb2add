//! The EC2 provider against a real EC2 API server (moto): an image becomes an
//! AMI (a builder instance, `CreateImage`, the builder terminated), a
//! 3-instance cluster of it runs with the right tags, key pair and security
//! group, stops and starts the same instances again, and destroying both
//! leaves nothing: every instance terminated, the group, the key, the
//! private key's setting and the AMI gone, as EC2's own list calls say.
//!
//! moto runs no workloads: this proves the API calls opsd makes, their tags
//! and cleanup, not that the instances serve (the test declares no checks;
//! nothing connects to the addresses moto hands out).

use std::collections::BTreeSet;
use std::time::Duration;

use opsd_tests::moto::Moto;
use opsd_tests::resources as res;
use opsd_tests::{client, Cluster, Options};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn ec2_image_and_cluster_lifecycle() {
    let Some(moto) = Moto::start("ec2_image_and_cluster_lifecycle").await else {
        return;
    };
    let env = Moto::node_env(&moto.endpoint());
    let cluster = Cluster::start_placed(1, Options::default(), move |c| c.env.extend(env.clone())).await;
    let addr = cluster.node(0).client_addr();
    let scope = cluster.node(0).status().await.expect("status").cluster_id;
    let base = moto.base_ami().await;

    // The image: a builder from the base AMI, imaged, then terminated.
    res::create(
        &addr,
        "image",
        "base",
        json!({"provider": "ec2", "source": base, "start": "exec /opt/web/serve"}),
    )
    .await
    .expect("create the image");
    let image = res::wait_resting(&addr, "image", "base", WAIT).await;
    let outputs = res::json_of(image.outputs.as_ref());
    assert_eq!(image.state, "built", "{outputs}");
    let ami = outputs["ami"].as_str().expect("outputs.ami").to_string();
    assert_eq!(outputs["region"], "us-east-1");
    let amis = moto.own_images(&format!("opsd-{scope}-base-")).await;
    assert_eq!(amis.len(), 1, "{amis:?}");
    assert_eq!(
        (amis[0]["id"].as_str(), amis[0]["state"].as_str()),
        (Some(ami.as_str()), Some("available"))
    );
    let builders = moto.instances(&scope, "image/base").await;
    assert_eq!(builders.len(), 1, "{builders:?}");
    assert_eq!(builders[0]["ami"].as_str(), Some(base.as_str()));
    assert_eq!(builders[0]["tags"]["opsd.role"], "builder");
    assert!(
        matches!(builders[0]["state"].as_str(), Some("terminated" | "shutting-down")),
        "the builder is left: {builders:?}"
    );

    // The cluster: three instances of the AMI, tagged, in its group, with its key.
    let created = res::create(
        &addr,
        "cluster",
        "web",
        json!({"provider": "ec2", "image": "base", "size": 3, "port": 8080}),
    )
    .await
    .expect("create the cluster");
    let run_id = created.run.expect("the create's run").run_id;
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    let outputs = res::json_of(web.outputs.as_ref());
    assert_eq!(web.state, "running", "{outputs}");
    let machines = outputs["machines"].as_array().cloned().unwrap_or_default();
    assert_eq!(machines.len(), 3, "{outputs}");
    let name = format!("opsd-{scope}-cluster-web");
    assert_eq!(outputs["key_name"], name.as_str());
    let group = outputs["security_group"]
        .as_str()
        .expect("outputs.security_group")
        .to_string();

    let instances = moto.instances(&scope, "cluster/web").await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    let mut indices = BTreeSet::new();
    for i in &instances {
        assert_eq!(i["state"], "running", "{i}");
        assert_eq!(i["ami"].as_str(), Some(ami.as_str()), "{i}");
        assert_eq!(i["key"].as_str(), Some(name.as_str()), "{i}");
        assert_eq!(i["groups"], json!([group]), "{i}");
        assert_eq!(i["tags"]["opsd.cluster"].as_str(), Some(scope.as_str()), "{i}");
        assert_eq!(i["tags"]["opsd.resource"], "cluster/web", "{i}");
        assert_eq!(i["tags"]["opsd.run"].as_str(), Some(run_id.as_str()), "{i}");
        indices.insert(i["tags"]["opsd.index"].as_str().unwrap_or("?").to_string());
        let index: u64 = i["tags"]["opsd.index"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("index tag");
        let m = machines
            .iter()
            .find(|m| m["index"] == index)
            .unwrap_or_else(|| panic!("machine {index} is not in the outputs: {outputs}"));
        assert_eq!(m["instance_id"], i["id"], "{m}");
        let ip = m["private_ip"].as_str().expect("private_ip");
        assert_eq!(m["address"], format!("{ip}:8080"), "{m}");
    }
    assert_eq!(indices, ["0", "1", "2"].map(String::from).into(), "{instances:?}");
    assert!(moto.group_exists(&name).await && moto.key_exists(&name).await);
    let key_setting = "scope/resource/cluster/web/ec2/ssh_private_key";
    let key = client::get(&addr, key_setting, false)
        .await
        .expect("the private key's setting")
        .setting
        .expect("a setting");
    assert!(key.secret && key.value == "***", "the private key is a secret: {key:?}");
    let revealed = client::connect(&addr)
        .settings
        .get(opsd_tests::api::GetRequest {
            key: key_setting.into(),
            reveal: true,
            ..Default::default()
        })
        .await
        .expect("the private key, revealed to the admin")
        .into_inner();
    assert!(
        revealed.setting.expect("a setting").value.contains("PRIVATE KEY"),
        "not a private key"
    );

    // Stop keeps the instances (stopped); start runs the same ones again.
    let ids: BTreeSet<String> = instances.iter().map(|i| i["id"].to_string()).collect();
    res::do_event(&addr, "cluster", "web", "stop", &[], "pause")
        .await
        .expect("stop");
    assert_eq!(res::wait_resting(&addr, "cluster", "web", WAIT).await.state, "stopped");
    let stopped = moto.instances(&scope, "cluster/web").await;
    assert!(stopped.iter().all(|i| i["state"] == "stopped"), "{stopped:?}");
    res::do_event(&addr, "cluster", "web", "start", &[], "resume")
        .await
        .expect("start");
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(web.state, "running", "{:?}", res::json_of(web.outputs.as_ref()));
    let restarted = moto.instances(&scope, "cluster/web").await;
    assert!(restarted.iter().all(|i| i["state"] == "running"), "{restarted:?}");
    assert_eq!(
        restarted.iter().map(|i| i["id"].to_string()).collect::<BTreeSet<_>>(),
        ids
    );

    // Destroy: every instance terminated, the group, the key and its setting gone.
    res::do_event(&addr, "cluster", "web", "destroy", &[], "test over")
        .await
        .expect("destroy");
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(web.state, "destroyed", "{:?}", res::json_of(web.outputs.as_ref()));
    let after = moto.instances(&scope, "cluster/web").await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|i| i["state"] == "terminated"), "{after:?}");
    assert!(!moto.group_exists(&name).await, "the security group is left");
    assert!(!moto.key_exists(&name).await, "the key pair is left");
    let gone = client::get(&addr, key_setting, false).await;
    assert_eq!(gone.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::NotFound));

    res::do_event(&addr, "image", "base", "destroy", &[], "test over")
        .await
        .expect("destroy");
    let image = res::wait_resting(&addr, "image", "base", WAIT).await;
    assert_eq!(image.state, "destroyed");
    assert_eq!(moto.own_images(&format!("opsd-{scope}-")).await, Vec::<Value>::new());
    assert_eq!(
        moto.live_instances().await,
        Vec::<Value>::new(),
        "instances left running"
    );
}
