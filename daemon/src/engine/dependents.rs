//! Which resources refer to which, so that a change to one resource can
//! poke the actors of the resources that depend on it (a cluster on its
//! image; a service on its clusters).
//!
//! The rule is the same for every kind: a spec key spelled as a kind's name
//! whose value is a resource name, or a list of resource names, refers to
//! the resources of that kind with those names. A cluster's
//! `image = "web"` refers to the image `web`; a spec `cluster = ["a", "b"]`
//! would refer to the clusters `a` and `b`. A key that happens to match no
//! kind costs an index entry and nothing else: no resource of a kind that
//! does not exist ever changes, so it pokes nothing.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::domain::kind::check_kind_name;
use crate::domain::resources::validate_name;

/// A resource: its kind and name.
pub(crate) type ResourceKey = (String, String);

/// The resources a spec (a JSON object as text) refers to, besides `own`
/// itself. A spec that is not an object refers to nothing.
pub(crate) fn references(own: &ResourceKey, spec_json: &str) -> BTreeSet<ResourceKey> {
    let Ok(Value::Object(spec)) = serde_json::from_str::<Value>(spec_json) else {
        return BTreeSet::new();
    };
    let mut refs = BTreeSet::new();
    for (key, value) in spec.iter().filter(|(key, _)| check_kind_name(key).is_ok()) {
        let names: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for name in names.into_iter().filter_map(Value::as_str) {
            let target = (key.clone(), name.to_string());
            if validate_name(name).is_ok() && target != *own {
                refs.insert(target);
            }
        }
    }
    refs
}

/// The index: for each resource, what it refers to and what refers to it.
#[derive(Debug, Default)]
pub(crate) struct Dependents {
    refers_to: HashMap<ResourceKey, BTreeSet<ResourceKey>>,
    referred_by: HashMap<ResourceKey, BTreeSet<ResourceKey>>,
}

impl Dependents {
    /// Records a created or changed resource's references, replacing those
    /// it had.
    pub fn set(&mut self, referrer: &ResourceKey, spec_json: &str) {
        let refs = references(referrer, spec_json);
        if self.refers_to.get(referrer) == Some(&refs) {
            return;
        }
        self.remove(referrer);
        if refs.is_empty() {
            return;
        }
        for target in &refs {
            self.referred_by
                .entry(target.clone())
                .or_default()
                .insert(referrer.clone());
        }
        self.refers_to.insert(referrer.clone(), refs);
    }

    /// Forgets a deleted resource's references. (What refers to it stays:
    /// a resource may be created again under the same name.)
    pub fn remove(&mut self, referrer: &ResourceKey) {
        for target in self.refers_to.remove(referrer).unwrap_or_default() {
            if let Some(by) = self.referred_by.get_mut(&target) {
                by.remove(referrer);
                if by.is_empty() {
                    self.referred_by.remove(&target);
                }
            }
        }
    }

    /// Follows a resource's creation or change (its spec), or its deletion
    /// or return to rest (`rests`: its references are forgotten), and says
    /// whose actors re-read their resource: its own, then those of the
    /// resources that refer to it.
    pub fn changed(&mut self, key: ResourceKey, spec_json: &str, rests: bool) -> Vec<ResourceKey> {
        if rests {
            self.remove(&key);
        } else {
            self.set(&key, spec_json);
        }
        let mut poke = vec![key];
        poke.extend(self.of(&poke[0]));
        poke
    }

    /// The resources that refer to `target`, sorted.
    pub fn of(&self, target: &ResourceKey) -> Vec<ResourceKey> {
        self.referred_by
            .get(target)
            .map(|by| by.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Rebuilds the index from every resource with a run in flight (kind,
    /// name, spec).
    pub fn rebuild<'a>(&mut self, all: impl IntoIterator<Item = (ResourceKey, &'a str)>) {
        *self = Dependents::default();
        for (key, spec_json) in all {
            self.set(&key, spec_json);
        }
    }

    /// How many resources refer to something.
    #[cfg(test)]
    fn referrers(&self) -> usize {
        self.refers_to.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str, name: &str) -> ResourceKey {
        (kind.to_string(), name.to_string())
    }

    #[test]
    fn a_cluster_refers_to_its_image() {
        let spec = r#"{"image": "web", "size": 3, "base_port": 9000, "env": {"LOG": "debug"}}"#;
        let refs = references(&key("cluster", "prod"), spec);
        assert_eq!(refs, BTreeSet::from([key("image", "web")]));
    }

    #[test]
    fn a_list_of_names_refers_to_each() {
        let spec = r#"{"cluster": ["a", "b", 3, "a"], "port": 80}"#;
        let refs = references(&key("service", "front"), spec);
        assert_eq!(refs, BTreeSet::from([key("cluster", "a"), key("cluster", "b")]));
    }

    #[test]
    fn values_that_cannot_be_names_and_keys_that_cannot_be_kinds_refer_to_nothing() {
        let spec = r#"{"command": "make all", "Image": "web", "image": "", "9x": "a", "path": "a/b", "flag": true}"#;
        assert!(references(&key("image", "x"), spec).is_empty());
        // Not an object, or not JSON at all.
        assert!(references(&key("image", "x"), "[1]").is_empty());
        assert!(references(&key("image", "x"), "").is_empty());
    }

    #[test]
    fn a_resource_does_not_refer_to_itself() {
        assert!(references(&key("image", "web"), r#"{"image": "web"}"#).is_empty());
    }

    #[test]
    fn the_index_answers_who_refers_to_a_resource() {
        let mut d = Dependents::default();
        d.set(&key("cluster", "a"), r#"{"image": "web", "size": 1}"#);
        d.set(&key("cluster", "b"), r#"{"image": "web", "size": 2}"#);
        d.set(&key("cluster", "c"), r#"{"image": "api", "size": 2}"#);
        d.set(&key("image", "web"), r#"{"dir": "/src"}"#);
        assert_eq!(
            d.of(&key("image", "web")),
            vec![key("cluster", "a"), key("cluster", "b")]
        );
        assert_eq!(d.of(&key("image", "api")), vec![key("cluster", "c")]);
        // Nothing refers to a cluster, nor to a resource of another kind with the same name.
        assert!(d.of(&key("cluster", "a")).is_empty());
        assert!(d.of(&key("cluster", "web")).is_empty());
        assert_eq!(d.referrers(), 3);
    }

    #[test]
    fn a_change_replaces_the_references() {
        let mut d = Dependents::default();
        d.set(&key("cluster", "a"), r#"{"image": "web"}"#);
        d.set(&key("cluster", "a"), r#"{"image": "api"}"#);
        assert!(d.of(&key("image", "web")).is_empty());
        assert_eq!(d.of(&key("image", "api")), vec![key("cluster", "a")]);
        // The same spec again changes nothing.
        d.set(&key("cluster", "a"), r#"{"image": "api"}"#);
        assert_eq!(d.of(&key("image", "api")), vec![key("cluster", "a")]);
        // A spec without references leaves nothing behind.
        d.set(&key("cluster", "a"), r#"{"size": 1}"#);
        assert!(d.of(&key("image", "api")).is_empty());
        assert_eq!(d.referrers(), 0);
        assert!(d.referred_by.is_empty());
    }

    #[test]
    fn a_deleted_referrer_is_forgotten_and_a_deleted_target_keeps_its_referrers() {
        let mut d = Dependents::default();
        d.set(&key("cluster", "a"), r#"{"image": "web"}"#);
        d.set(&key("cluster", "b"), r#"{"image": "web"}"#);
        d.remove(&key("image", "web"));
        assert_eq!(d.of(&key("image", "web")).len(), 2);
        d.remove(&key("cluster", "a"));
        assert_eq!(d.of(&key("image", "web")), vec![key("cluster", "b")]);
        d.remove(&key("cluster", "b"));
        assert!(d.of(&key("image", "web")).is_empty());
        assert!(d.referred_by.is_empty() && d.refers_to.is_empty());
        // Removing what is not there is fine.
        d.remove(&key("cluster", "zzz"));
    }

    #[test]
    fn a_change_pokes_the_resource_and_those_that_refer_to_it() {
        let mut d = Dependents::default();
        let image = r#"{"dir": "/src", "start": "./run"}"#;
        assert_eq!(d.changed(key("image", "web"), image, false), vec![key("image", "web")]);
        assert_eq!(
            d.changed(key("cluster", "a"), r#"{"image": "web", "size": 1}"#, false),
            vec![key("cluster", "a")]
        );
        d.changed(key("cluster", "b"), r#"{"image": "web", "size": 2}"#, false);
        assert_eq!(
            d.changed(key("image", "web"), image, false),
            vec![key("image", "web"), key("cluster", "a"), key("cluster", "b")]
        );
        // The image deleted: its clusters hear of it too.
        assert_eq!(
            d.changed(key("image", "web"), image, true),
            vec![key("image", "web"), key("cluster", "a"), key("cluster", "b")]
        );
        // A cluster deleted: nothing refers to it; the image no longer pokes it.
        assert_eq!(d.changed(key("cluster", "a"), "", true), vec![key("cluster", "a")]);
        assert_eq!(
            d.changed(key("image", "web"), image, false),
            vec![key("image", "web"), key("cluster", "b")]
        );
    }

    #[test]
    fn a_rebuild_replaces_everything() {
        let mut d = Dependents::default();
        d.set(&key("cluster", "gone"), r#"{"image": "old"}"#);
        let specs = [
            (key("cluster", "a"), r#"{"image": "web"}"#),
            (key("image", "web"), r#"{}"#),
        ];
        d.rebuild(specs.iter().map(|(k, s)| (k.clone(), *s)));
        assert!(d.of(&key("image", "old")).is_empty());
        assert_eq!(d.of(&key("image", "web")), vec![key("cluster", "a")]);
        assert_eq!(d.referrers(), 1);
    }
}
