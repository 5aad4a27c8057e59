//! Flows, chains, groups and chords: all built on `depends_on`, nothing beside it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{JobId, JobSpec, ValidationError};

/// Deepest flow tree accepted.
pub const MAX_FLOW_DEPTH: usize = 64;

/// A job and the subtrees it depends on (BullMQ's flow, Celery's chord).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// The job that runs once all its children completed.
    pub job: JobSpec,
    /// Subtrees; each child's root must complete first.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "crate::wire::null_default")]
    pub children: Vec<Flow>,
}

impl Flow {
    /// The specs children first, each parent depending on its children, so
    /// every dependency comes before its dependent (one atomic insert). Ids
    /// are generated where missing; returns the root's id and the specs.
    pub fn flatten(self) -> Result<(JobId, Vec<JobSpec>), ValidationError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let root = walk(self, &mut out, &mut seen, 0)?;
        Ok((root, out))
    }
}

fn walk(node: Flow, out: &mut Vec<JobSpec>, seen: &mut HashSet<String>, depth: usize) -> Result<JobId, ValidationError> {
    if depth > MAX_FLOW_DEPTH {
        return Err(ValidationError::new("children", format!("a flow may be at most {MAX_FLOW_DEPTH} levels deep")));
    }
    let mut spec = node.job;
    let id = match spec.id.take() {
        Some(id) => JobId::new(id).map_err(|m| ValidationError::new("id", m))?,
        None => JobId::generate(),
    };
    for child in node.children {
        let child_id = walk(child, out, seen, depth + 1)?;
        spec.depends_on.push(child_id.to_string());
    }
    if !seen.insert(id.to_string()) {
        return Err(ValidationError::new("id", format!("`{id}` appears twice in the flow")));
    }
    spec.id = Some(id.to_string());
    out.push(spec);
    Ok(id)
}

/// A chain: each step depends on the one before and sees its result in
/// `dependency_results` (Celery's chain). Ids are generated where missing.
pub fn chain(steps: Vec<JobSpec>) -> Vec<JobSpec> {
    let mut prev: Option<String> = None;
    steps
        .into_iter()
        .map(|mut s| {
            let id = s.id.get_or_insert_with(|| JobId::generate().to_string()).clone();
            if let Some(p) = prev.replace(id) {
                s.depends_on.push(p);
            }
            s
        })
        .collect()
}

/// A chord: `callback` runs once every job of `group` completed, with all
/// their results (Celery's chord, a fan-in).
pub fn chord(group: Vec<JobSpec>, mut callback: JobSpec) -> Vec<JobSpec> {
    let mut out: Vec<JobSpec> = group
        .into_iter()
        .map(|mut s| {
            s.id.get_or_insert_with(|| JobId::generate().to_string());
            s
        })
        .collect();
    callback.depends_on.extend(out.iter().map(|s| s.id.clone().expect("set above")));
    out.push(callback);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flatten_puts_children_first() {
        let tree: Flow = serde_json::from_value(json!({"job": {"kind": "p", "id": "p"}, "children": [
            {"job": {"kind": "c", "id": "c1"}, "children": [{"job": {"kind": "g", "id": "g1"}}]},
            {"job": {"kind": "c", "id": "c2"}}]}))
        .unwrap();
        let (root, specs) = tree.flatten().unwrap();
        assert_eq!(root.as_str(), "p");
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_deref().unwrap()).collect();
        assert_eq!(ids, ["g1", "c1", "c2", "p"]);
        assert_eq!(specs[3].depends_on, ["c1", "c2"]);
        let dup: Flow = serde_json::from_value(json!({"job": {"kind": "p", "id": "x"}, "children": [{"job": {"kind": "c", "id": "x"}}]})).unwrap();
        assert!(dup.flatten().is_err());
    }

    #[test]
    fn chain_and_chord_wire_dependencies() {
        let steps = chain(vec![JobSpec::new("q", "a", json!(1)), JobSpec::new("q", "b", json!(2)), JobSpec::new("q", "c", json!(3))]);
        assert!(steps[0].depends_on.is_empty());
        assert_eq!(steps[1].depends_on, [steps[0].id.clone().unwrap()]);
        assert_eq!(steps[2].depends_on, [steps[1].id.clone().unwrap()]);
        let c = chord(vec![JobSpec::new("q", "a", json!(1)), JobSpec::new("q", "b", json!(2))], JobSpec::new("q", "sum", json!(null)));
        assert_eq!(c[2].depends_on.len(), 2);
    }
}
