//! The fake API server's state: objects by resource, namespace and name, a resource version
//! shared by all of them, and the history of changes that watches replay.
//!
//! It keeps what controllers rely on: `resourceVersion` and `generation` (bumped on spec
//! changes only), status and scale as subresources that leave the rest alone, deletion that
//! waits for finalizers, optimistic concurrency on replace, and the field ownership of
//! server-side apply where a lease election needs it (an apply that takes a field another
//! manager set is refused with 409).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

/// A resource as the server names it: plural and API group (`""` for the core group).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl Resource {
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Self { group: group.into(), version: version.into(), plural: plural.into() }
    }

    /// Resources whose status is a subresource: writes to the object leave it alone.
    fn has_status_subresource(&self) -> bool {
        matches!(self.plural.as_str(), "couponevents" | "deployments" | "horizontalpodautoscalers")
    }
}

/// One object's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
}

/// A change as a watch delivers it.
#[derive(Clone, Debug)]
pub struct Change {
    pub resource_version: u64,
    pub key: Key,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
}

/// How a write failed, as the API server would answer.
#[derive(Debug)]
pub struct Refused {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Refused {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    pub fn not_found(key: &Key) -> Self {
        Self::new(404, "NotFound", format!("{} \"{}\" not found", key.resource.plural, key.name))
    }

    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Object,
    Status,
}

#[derive(Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    /// Server-side apply ownership: per object, field path -> field manager.
    owners: HashMap<Key, HashMap<String, String>>,
    resource_version: u64,
    uids: u64,
    pub history: Vec<Change>,
}

/// Leaf paths of a JSON object below `spec` (what apply ownership tracks).
fn spec_fields(value: &Value) -> Vec<(String, Value)> {
    value
        .get("spec")
        .and_then(Value::as_object)
        .map(|spec| spec.iter().map(|(k, v)| (format!("spec.{k}"), v.clone())).collect())
        .unwrap_or_default()
}

fn field<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(object, |v, k| v.get(k)).filter(|v| !v.is_null())
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of a resource, in one namespace or (`None`) all of them.
    pub fn list(&self, resource: &Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| &k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn record(&mut self, key: &Key, kind: &'static str, object: Value) {
        self.history.push(Change { resource_version: self.resource_version, key: key.clone(), kind, object });
    }

    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Creates an object (`POST`). `generateName` is honoured.
    pub fn create(&mut self, resource: &Resource, namespace: &str, mut object: Value) -> Result<Value, Refused> {
        let name = match object["metadata"]["name"].as_str() {
            Some(name) => name.to_owned(),
            None => match object["metadata"]["generateName"].as_str() {
                Some(prefix) => format!("{prefix}{:05}", self.uids + 1),
                None => return Err(Refused::new(422, "Invalid", "metadata.name is required")),
            },
        };
        let key = Key { resource: resource.clone(), namespace: namespace.into(), name: name.clone() };
        if self.objects.contains_key(&key) {
            return Err(Refused::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource.plural)));
        }
        self.uids += 1;
        let version = self.next_version();
        let metadata = object["metadata"].as_object_mut().ok_or_else(|| Refused::new(422, "Invalid", "metadata is required"))?;
        metadata.insert("name".into(), json!(name));
        if !namespace.is_empty() {
            metadata.insert("namespace".into(), json!(namespace));
        }
        metadata.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012}", self.uids)));
        metadata.insert("resourceVersion".into(), json!(version.to_string()));
        metadata.insert("generation".into(), json!(1));
        metadata.insert("creationTimestamp".into(), json!(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap().to_string()));
        metadata.remove("deletionTimestamp");
        self.objects.insert(key.clone(), object.clone());
        self.record(&key, "ADDED", object.clone());
        Ok(object)
    }

    /// Replaces `part` of an object with `proposed` (the result of a PUT or of a patch applied
    /// to the current object). Keeps what the addressed part may not change.
    pub fn update(&mut self, key: &Key, part: Part, mut proposed: Value) -> Result<Value, Refused> {
        let current = self.objects.get(key).ok_or_else(|| Refused::not_found(key))?.clone();
        if let Some(expected) = proposed["metadata"]["resourceVersion"].as_str() {
            if Some(expected) != current["metadata"]["resourceVersion"].as_str() {
                return Err(Refused::new(409, "Conflict", "the object has been modified; please apply your changes to the latest version"));
            }
        }
        let keep_status = key.resource.has_status_subresource() && part == Part::Object;
        match part {
            Part::Status => {
                let status = proposed.get("status").cloned().unwrap_or(Value::Null);
                proposed = current.clone();
                proposed["status"] = status;
            }
            Part::Object if keep_status => match current.get("status") {
                Some(status) => proposed["status"] = status.clone(),
                None => {
                    proposed.as_object_mut().map(|o| o.remove("status"));
                }
            },
            Part::Object => {}
        }
        // Identity and bookkeeping stay the server's.
        for field in ["uid", "creationTimestamp", "generation", "deletionTimestamp", "name", "namespace"] {
            match current["metadata"].get(field) {
                Some(value) => proposed["metadata"][field] = value.clone(),
                None => {
                    proposed["metadata"].as_object_mut().map(|m| m.remove(field));
                }
            }
        }
        let body = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                o.remove("status");
            }
            v
        };
        if body(&proposed) != body(&current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            proposed["metadata"]["generation"] = json!(generation);
        }
        if proposed == current {
            return Ok(current);
        }
        let version = self.next_version();
        proposed["metadata"]["resourceVersion"] = json!(version.to_string());
        let finalizers_left = proposed["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if proposed["metadata"].get("deletionTimestamp").is_some() && !finalizers_left {
            self.objects.remove(key);
            self.owners.remove(key);
            self.record(key, "DELETED", proposed.clone());
        } else {
            self.objects.insert(key.clone(), proposed.clone());
            self.record(key, "MODIFIED", proposed.clone());
        }
        Ok(proposed)
    }

    /// `DELETE`: with finalizers the object only gets its deletion timestamp.
    pub fn delete(&mut self, key: &Key) -> Result<Value, Refused> {
        let mut object = self.objects.get(key).ok_or_else(|| Refused::not_found(key))?.clone();
        let finalizers_left = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if finalizers_left {
            if object["metadata"].get("deletionTimestamp").is_none() {
                object["metadata"]["deletionTimestamp"] = json!(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap().to_string());
                self.objects.insert(key.clone(), object.clone());
                self.record(key, "MODIFIED", object.clone());
            }
        } else {
            self.objects.remove(key);
            self.owners.remove(key);
            self.record(key, "DELETED", object.clone());
        }
        Ok(object)
    }

    /// Server-side apply, for the fields below `spec`: a field another manager set to a
    /// different value is a conflict unless forced. Creates the object when it is missing.
    pub fn apply(&mut self, key: &Key, part: Part, patch: &Value, manager: &str, force: bool) -> Result<Value, Refused> {
        let Some(current) = self.objects.get(key).cloned() else {
            let mut object = patch.clone();
            object["metadata"]["name"] = json!(key.name);
            let created = self.create(&key.resource, &key.namespace, object)?;
            let owners = self.owners.entry(key.clone()).or_default();
            for (path, _) in spec_fields(patch) {
                owners.insert(path, manager.to_owned());
            }
            return Ok(created);
        };
        let owners = self.owners.entry(key.clone()).or_default();
        if !force {
            for (path, value) in spec_fields(patch) {
                let owner = owners.get(&path);
                if owner.is_some_and(|o| o != manager) && field(&current, &path).is_some_and(|v| v != &value) {
                    return Err(Refused::new(
                        409,
                        "Conflict",
                        format!("Apply failed with 1 conflict: conflict with \"{}\": .{path}", owner.unwrap()),
                    ));
                }
            }
        }
        for (path, value) in spec_fields(patch) {
            if value.is_null() {
                owners.remove(&path);
            } else {
                owners.insert(path, manager.to_owned());
            }
        }
        let mut proposed = current;
        json_patch::merge(&mut proposed, &strip_identity(patch));
        self.update(key, part, proposed)
    }

    /// A merge or strategic-merge patch by `manager`: fields it sets become its own, fields
    /// it removes lose their owner.
    pub fn merge(&mut self, key: &Key, part: Part, patch: &Value, manager: Option<&str>) -> Result<Value, Refused> {
        let mut proposed = self.objects.get(key).ok_or_else(|| Refused::not_found(key))?.clone();
        let owners = self.owners.entry(key.clone()).or_default();
        for (path, value) in spec_fields(patch) {
            match (value.is_null(), manager) {
                (true, _) => {
                    owners.remove(&path);
                }
                (false, Some(manager)) => {
                    owners.insert(path, manager.to_owned());
                }
                (false, None) => {}
            }
        }
        json_patch::merge(&mut proposed, patch);
        self.update(key, part, proposed)
    }

    /// An RFC 6902 JSON patch (`test` operations included).
    pub fn json_patch(&mut self, key: &Key, part: Part, patch: &Value) -> Result<Value, Refused> {
        let mut proposed = self.objects.get(key).ok_or_else(|| Refused::not_found(key))?.clone();
        // As the API server does: `test` of a missing field against `null` passes (kube's
        // finalizer helper tests that there are no finalizers yet that way).
        let mut operations = patch.as_array().cloned().unwrap_or_default();
        for op in operations.iter().filter(|op| op["op"] == "test" && op["value"].is_null()) {
            let path = op["path"].as_str().unwrap_or_default();
            if proposed.pointer(path).is_some_and(|v| !v.is_null()) {
                return Err(Refused::new(422, "Invalid", format!("JSON patch: test of {path} failed")));
            }
        }
        operations.retain(|op| !(op["op"] == "test" && op["value"].is_null()));
        let operations: json_patch::Patch = serde_json::from_value(Value::Array(operations))
            .map_err(|e| Refused::new(400, "BadRequest", format!("invalid JSON patch: {e}")))?;
        json_patch::patch(&mut proposed, &operations).map_err(|e| Refused::new(422, "Invalid", format!("JSON patch: {e}")))?;
        self.update(key, part, proposed)
    }
}

/// An apply body names the object; the server's identity fields are not the client's to set.
fn strip_identity(patch: &Value) -> Value {
    let mut patch = patch.clone();
    if let Some(metadata) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        let kept: Map<String, Value> = metadata
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "labels" | "annotations" | "finalizers"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *metadata = kept;
    }
    patch
}
