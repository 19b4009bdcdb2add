//! opsd's gRPC API, generated from the `.proto` files of this crate. The
//! `.proto` files are the documented contract; this crate is their Rust
//! rendering, shared by the daemon, the client library, `opsctl` and the
//! end-to-end tests, plus the conversions every one of them needs between the
//! contract's well-known types (`Struct`, `Timestamp`, `Duration`, the outcome
//! enum) and plain Rust values, and how both ports are served and dialled
//! ([`transport`]), so that no two of them write their own.

pub mod json;
pub mod machine_env;
pub mod time;
pub mod transport;

/// The well-known types (`Struct`, `Timestamp`, `Duration`) the contract
/// uses, re-exported so clients name the same version of them.
pub use prost_types;

/// The client API (cluster status and membership, settings, resources).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("opsd.v1");
}

/// The internal node-to-node protocol.
#[allow(clippy::all, missing_docs)]
pub mod peer {
    tonic::include_proto!("opsd.peer.v1");
}

/// The encoded descriptor set of the client API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("opsd_descriptor");

impl v1::RunOutcome {
    /// Every outcome a run can have, in the order the API lists them.
    pub const ALL: [v1::RunOutcome; 5] = [
        v1::RunOutcome::Running,
        v1::RunOutcome::Succeeded,
        v1::RunOutcome::Failed,
        v1::RunOutcome::Cancelled,
        v1::RunOutcome::Interrupted,
    ];

    /// The outcome's short name, as the CLI and its JSON output show it
    /// (`succeeded`); `unspecified` for the zero value.
    pub fn label(self) -> &'static str {
        match self {
            v1::RunOutcome::Unspecified => "unspecified",
            v1::RunOutcome::Running => "running",
            v1::RunOutcome::Succeeded => "succeeded",
            v1::RunOutcome::Failed => "failed",
            v1::RunOutcome::Cancelled => "cancelled",
            v1::RunOutcome::Interrupted => "interrupted",
        }
    }

    /// The outcome with this short name (see [`Self::label`]), if any.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.label() == label)
    }
}

impl v1::TriggerSource {
    /// The source's short name, as the CLI and its JSON output show it (`api`);
    /// `unspecified` for the zero value.
    pub fn label(self) -> &'static str {
        match self {
            v1::TriggerSource::Unspecified => "unspecified",
            v1::TriggerSource::Api => "api",
            v1::TriggerSource::Schedule => "schedule",
            v1::TriggerSource::Recovery => "recovery",
        }
    }

    /// The source with this short name (see [`Self::label`]), if any.
    pub fn from_label(label: &str) -> Option<Self> {
        [
            v1::TriggerSource::Api,
            v1::TriggerSource::Schedule,
            v1::TriggerSource::Recovery,
        ]
        .into_iter()
        .find(|s| s.label() == label)
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{RunOutcome, TriggerSource};

    #[test]
    fn the_reflection_descriptors_include_the_well_known_types() {
        // A client building the API from reflection needs the imported files too.
        let set: prost_types::FileDescriptorSet = prost::Message::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        for want in [
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "opsd/v1/resources.proto",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }

    #[test]
    fn outcome_labels_round_trip() {
        for outcome in RunOutcome::ALL {
            assert_eq!(RunOutcome::from_label(outcome.label()), Some(outcome));
        }
        assert_eq!(RunOutcome::from_label("unspecified"), None);
        assert_eq!(RunOutcome::from_label("maybe"), None);
        assert_eq!(TriggerSource::from_label("recovery"), Some(TriggerSource::Recovery));
        assert_eq!(TriggerSource::from_label("unspecified"), None);
    }
}
