//! The EC2 provider's spec keys, checked (every error names its field), and
//! the names, tags and client tokens of what it makes: all derived from the
//! opsd cluster's id (the scope), the resource and the run, so that a step
//! run again finds what an earlier attempt made, and two opsd clusters
//! sharing one account never touch each other's instances.

use serde_json::Value;

use crate::ops::{fields, Object};

/// The instance type used when a spec names none.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";

/// The user ssh logs in as when a spec names none (Amazon Linux's).
pub const DEFAULT_SSH_USER: &str = "ec2-user";

/// Where ingress to a cluster's port (and ssh) is allowed from when a spec
/// names nothing: the private address ranges, so opsd nodes in the same
/// network can run the checks and nothing on the internet can connect.
pub const DEFAULT_ALLOW_FROM: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// Tag: the opsd cluster (scope) that made it.
pub const TAG_CLUSTER: &str = "opsd.cluster";
/// Tag: the resource it belongs to, `KIND/NAME`.
pub const TAG_RESOURCE: &str = "opsd.resource";
/// Tag: the run that made it.
pub const TAG_RUN: &str = "opsd.run";
/// Tag: a cluster instance's index.
pub const TAG_INDEX: &str = "opsd.index";
/// Tag: what an instance is for (`machine`, or `builder` for an image's).
pub const TAG_ROLE: &str = "opsd.role";

/// The setting, in the cluster resource's scope, holding the private key of
/// its key pair (`scope/resource/cluster/NAME/ec2/ssh_private_key`), read by
/// `opsctl shell`.
pub const SSH_KEY_SETTING: &str = "ec2/ssh_private_key";

/// An image's spec on EC2.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    /// `source`: the AMI the builder instance starts from.
    pub base_ami: String,
    /// `instance_type` of the builder.
    pub instance_type: String,
    /// `build`: shell commands run as root at the builder's first boot.
    pub build: Vec<String>,
    /// `start`: the command a machine of a cluster of this image runs at boot.
    pub start: Option<String>,
    /// `build_timeout`: how long the build commands may take, in seconds.
    pub build_timeout_secs: u64,
}

/// A cluster's spec on EC2.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// `image`: an ec2 image resource.
    pub image: String,
    /// `size`: how many instances.
    pub size: u64,
    /// `instance_type`.
    pub instance_type: String,
    /// `port`: where each machine serves (its address is PRIVATE_IP:port).
    pub port: u16,
    /// `user_data`: the boot script, instead of the image's start command.
    pub user_data: Option<String>,
    /// `ssh_user`: whom `opsctl shell` logs in as.
    pub ssh_user: String,
    /// `allow_from`: CIDRs allowed to reach the port and ssh.
    pub allow_from: Vec<String>,
    /// `subnet_id`: where the instances go (else the default VPC's default).
    pub subnet_id: Option<String>,
}

/// An optional non-empty string at `key`.
fn opt_string(spec: &Object, key: &str, what: &str) -> Result<Option<String>, String> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(v) => Err(format!("spec.{key}: must be {what}, not {v}")),
    }
}

/// `instance_type`, defaulted.
fn instance_type(spec: &Object) -> Result<String, String> {
    let t = opt_string(spec, "instance_type", "an EC2 instance type such as t3.micro")?;
    let t = t.unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
    if !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(format!(
            "spec.instance_type: {t:?} is not an instance type such as t3.micro"
        ));
    }
    Ok(t)
}

/// Checks an image's spec.
pub fn image_spec(spec: &Object) -> Result<ImageSpec, String> {
    let base_ami = match spec.get("source") {
        Some(Value::String(s)) if is_ami_id(s) => s.clone(),
        None | Some(Value::Null) => return Err("spec.source: required: the AMI to build from (ami-...)".into()),
        Some(v) => return Err(format!("spec.source: must be an AMI id (ami-...), not {v}")),
    };
    let build = fields::build_commands(spec)?;
    let build_timeout_secs = match spec.get("build_timeout") {
        None | Some(Value::Null) => 1800,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=86_400).contains(n))
            .ok_or_else(|| format!("spec.build_timeout: must be a number of seconds from 1 to 86400, not {v}"))?,
    };
    Ok(ImageSpec {
        base_ami,
        instance_type: instance_type(spec)?,
        build,
        start: opt_string(spec, "start", "a string (the command a machine runs at boot)")?,
        build_timeout_secs,
    })
}

/// Checks a cluster's spec.
pub fn cluster_spec(spec: &Object) -> Result<ClusterSpec, String> {
    let image = fields::image(spec)?;
    let size = fields::size(spec)?;
    let port = fields::port(spec, 80)?;
    let allow_from = match spec.get("allow_from") {
        None | Some(Value::Null) => DEFAULT_ALLOW_FROM.map(String::from).to_vec(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("spec.allow_from[{i}]: must be a CIDR such as 10.0.0.0/16"))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(format!("spec.allow_from: must be a CIDR or an array of CIDRs, not {v}")),
    };
    for (i, cidr) in allow_from.iter().enumerate() {
        if !is_cidr(cidr) {
            return Err(format!(
                "spec.allow_from[{i}]: {cidr:?} is not a CIDR such as 10.0.0.0/16"
            ));
        }
    }
    Ok(ClusterSpec {
        image,
        size,
        instance_type: instance_type(spec)?,
        port,
        user_data: opt_string(spec, "user_data", "a string (the instances' boot script)")?,
        ssh_user: opt_string(spec, "ssh_user", "a user name")?.unwrap_or_else(|| DEFAULT_SSH_USER.to_string()),
        allow_from,
        subnet_id: opt_string(spec, "subnet_id", "a subnet id (subnet-...)")?,
    })
}

/// Whether `s` looks like an AMI id (`ami-` and hex digits).
fn is_ami_id(s: &str) -> bool {
    s.strip_prefix("ami-")
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether `s` is an IPv4 CIDR (`a.b.c.d/n`).
fn is_cidr(s: &str) -> bool {
    s.split_once('/')
        .is_some_and(|(ip, len)| ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|n| n <= 32))
}

/// The name of a resource's security group and key pair:
/// `opsd-SCOPE-KIND-NAME`.
pub fn resource_name(scope: &str, kind: &str, name: &str) -> String {
    format!("opsd-{scope}-{kind}-{name}")
}

/// The name of an image's AMI made from builder `builder` (one AMI per
/// build: a takeover of the same build finds it by this name).
pub fn ami_name(scope: &str, image: &str, builder: &str) -> String {
    let name = format!("opsd-{scope}-{image}-{builder}");
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "().-/_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect()
}

/// The `ClientToken` of a `RunInstances` call: the run, the instance's
/// index (or role) and a digest of the scope and resource, so the same call
/// repeated (a retry, a takeover) is the same request to EC2, and tokens of
/// two opsd clusters (whose run ids may coincide) differ. At most 64 bytes.
pub fn client_token(scope: &str, resource: &str, run_id: &str, what: &str) -> String {
    let digest = fnv1a(format!("{scope}\n{resource}").as_bytes());
    let mut token = format!("{digest:016x}-{what}-{run_id}");
    token.truncate(64);
    token
}

/// FNV-1a, 64 bits: a digest that is the same in every build (the token
/// must not change between the opsd versions of a rolling upgrade).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The builder's boot script: the build commands under `sh -e`, then a
/// power-off, which is how opsd learns that the build is done (the builder
/// stops). A failed command leaves it running, and the build times out.
pub fn builder_user_data(build: &[String]) -> Option<String> {
    if build.is_empty() {
        return None;
    }
    let mut script =
        String::from("#!/bin/sh\n# opsd image build: the commands of spec.build, then power off.\nset -e\n");
    for command in build {
        script.push_str(command);
        script.push('\n');
    }
    script.push_str("poweroff || shutdown -h now\n");
    Some(script)
}

/// A machine's boot script: `spec.user_data` as given, else the image's
/// start command with `PORT` set.
pub fn machine_user_data(spec: &ClusterSpec, start: Option<&str>, cluster: &str) -> Option<String> {
    if let Some(u) = &spec.user_data {
        return Some(u.clone());
    }
    start.map(|start| {
        format!(
            "#!/bin/sh\n# opsd: the image's start command\nexport PORT={} OPSD_CLUSTER={}\n{start}\n",
            spec.port,
            shell_quote(cluster)
        )
    })
}

/// `s` quoted for /bin/sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Standard base64 (user data goes to EC2 encoded).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_image_spec_names_the_field_at_fault() {
        let s = image_spec(&obj(json!({"source": "ami-0abc12"}))).unwrap();
        assert_eq!(s.base_ami, "ami-0abc12");
        assert_eq!(s.instance_type, DEFAULT_INSTANCE_TYPE);
        assert!(s.build.is_empty() && s.start.is_none());
        for (spec, field) in [
            (json!({}), "spec.source: required"),
            (json!({"source": "./web"}), "spec.source: must be an AMI id"),
            (json!({"source": "ami-1", "build": 3}), "spec.build: "),
            (json!({"source": "ami-1", "build": ["ok", 1]}), "spec.build[1]: "),
            (
                json!({"source": "ami-1", "instance_type": "t3 micro"}),
                "spec.instance_type: ",
            ),
            (json!({"source": "ami-1", "build_timeout": 0}), "spec.build_timeout: "),
            (json!({"source": "ami-1", "start": 5}), "spec.start: "),
        ] {
            let e = image_spec(&obj(spec.clone())).unwrap_err();
            assert!(e.starts_with(field), "{spec}: {e}");
        }
    }

    #[test]
    fn a_cluster_spec_names_the_field_at_fault() {
        let s = cluster_spec(&obj(json!({"image": "base", "size": 3, "port": 8080}))).unwrap();
        assert_eq!((s.size, s.port, s.ssh_user.as_str()), (3, 8080, DEFAULT_SSH_USER));
        assert_eq!(s.allow_from.len(), 3);
        for (spec, field) in [
            (json!({"size": 1}), "spec.image: required"),
            (json!({"image": "b"}), "spec.size: required"),
            (json!({"image": "b", "size": 65}), "spec.size: must be"),
            (json!({"image": "b", "size": 1, "port": 70000}), "spec.port: "),
            (
                json!({"image": "b", "size": 1, "allow_from": "10.0.0.0"}),
                "spec.allow_from[0]: ",
            ),
            (json!({"image": "b", "size": 1, "allow_from": 7}), "spec.allow_from: "),
            (json!({"image": "b", "size": 1, "user_data": ""}), "spec.user_data: "),
        ] {
            let e = cluster_spec(&obj(spec.clone())).unwrap_err();
            assert!(e.starts_with(field), "{spec}: {e}");
        }
    }

    #[test]
    fn tokens_are_stable_short_and_differ_by_scope_resource_run_and_index() {
        let t = client_token("c1", "cluster/web", "r57", "2");
        assert_eq!(t, client_token("c1", "cluster/web", "r57", "2"));
        assert!(t.len() <= 64 && t.ends_with("-2-r57"), "{t}");
        assert_ne!(t, client_token("c2", "cluster/web", "r57", "2"));
        assert_ne!(t, client_token("c1", "cluster/api", "r57", "2"));
        assert_ne!(t, client_token("c1", "cluster/web", "r58", "2"));
        assert_ne!(t, client_token("c1", "cluster/web", "r57", "1"));
        assert!(client_token("c1", "x", &"r".repeat(100), "0").len() <= 64);
    }

    #[test]
    fn user_data_runs_the_build_then_powers_off() {
        assert_eq!(builder_user_data(&[]), None);
        let s = builder_user_data(&["apt-get install -y nginx".into(), "echo ok".into()]).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(s.contains("set -e\napt-get install -y nginx\necho ok\npoweroff"), "{s}");
        let spec = cluster_spec(&obj(json!({"image": "b", "size": 1, "port": 81}))).unwrap();
        let u = machine_user_data(&spec, Some("exec web"), "it's").unwrap();
        assert!(u.contains("export PORT=81 OPSD_CLUSTER='it'\\''s'\nexec web\n"), "{u}");
        assert_eq!(machine_user_data(&spec, None, "w"), None);
    }

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn ami_names_keep_only_what_ec2_allows() {
        assert_eq!(ami_name("c-1", "web", "i-0a"), "opsd-c-1-web-i-0a");
        assert_eq!(ami_name("c", "a b", "i").len(), "opsd-c-a_b-i".len());
        assert!(ami_name(&"x".repeat(200), "w", "i").len() <= 128);
    }
}
