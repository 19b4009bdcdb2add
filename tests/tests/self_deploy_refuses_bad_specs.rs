//! An opsd-cluster the node cannot make is refused at create, naming the
//! field, and nothing is created: on EC2 (that provider does not run opsd
//! nodes: docs/providers.md says what an operator does instead), on the
//! local provider, with a size out of range, with hosts that are not one IP
//! address per node. Needs no Docker: nothing gets that far.

use opsd_tests::resources as res;
use opsd_tests::{Cluster, Opsctl, Options};
use tonic::Code;

#[tokio::test]
async fn self_deploy_refuses_bad_specs() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let opsctl = Opsctl { addr: addr.clone() };
    for (sets, says) in [
        (
            vec!["size=3", "provider=ec2"],
            "spec.provider: the ec2 provider cannot run kind opsd-cluster",
        ),
        (
            vec!["size=3", "provider=local"],
            "spec.provider: the local provider cannot run kind opsd-cluster",
        ),
        (vec!["size=9"], "spec.size: must be a whole number from 1 to 5"),
        (vec!["size=0"], "spec.size: must be a whole number from 1 to 5"),
        (
            vec!["size=2", r#"hosts=["127.0.100.1"]"#],
            "spec.hosts: 1 addresses for 2 nodes; give one per node",
        ),
        (
            vec!["size=1", r#"hosts=["web"]"#],
            "spec.hosts[0]: must be an IP address",
        ),
    ] {
        let mut args = vec!["create", "opsd-cluster/prod"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let stderr = opsctl.fails(&args, 1).await;
        assert!(stderr.contains(says), "{sets:?}: {stderr}");
        assert_eq!(
            res::get(&addr, "opsd-cluster", "prod").await.unwrap_err().code(),
            Code::NotFound,
            "{sets:?} created something"
        );
    }
}
