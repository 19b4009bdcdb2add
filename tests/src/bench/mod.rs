//! The pieces of `opsd-bench`, which measures opsd side by side with etcd
//! (see docs/BENCHMARKS.md): an etcd cluster on loopback and its client, one
//! load harness for both systems, the opsd-only figures (the load balancer's
//! and a chatty step's among them), and the report.

pub mod chatty;
pub mod etcd;
pub mod figures;
pub mod lb;
pub mod load;
pub mod report;
