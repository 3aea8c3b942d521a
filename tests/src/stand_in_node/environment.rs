//! What a container's process sees: its environment (values, Secret and ConfigMap keys, the
//! downward API), its mounted Secrets, ConfigMaps and emptyDirs written to the Pod's folder,
//! and a kubeconfig with a token of the Pod's ServiceAccount in place of the in-cluster mount.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, ServiceAccount, Volume};
use kube::api::PostParams;
use kube::config::{AuthInfo, Cluster, Context as KubeContext, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use kube::Api;

/// Where the in-cluster service-account files would be mounted: the process gets
/// `KUBECONFIG` instead.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A container's process, ready to start.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
}

/// Everything a Pod's containers share: its namespace's objects, its folder, its address.
pub struct PodContext<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub pod_ip: &'a str,
    pub node_name: &'a str,
    pub folder: &'a Path,
    /// The API server's address and CA, for the Pod's kubeconfig.
    pub server: &'a str,
    pub ca_pem: &'a str,
    /// Image name (last path segment, without tag) -> local binary.
    pub binaries: &'a BTreeMap<String, PathBuf>,
}

impl PodContext<'_> {
    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>> {
        Ok(Api::<Secret>::namespaced(self.client.clone(), self.namespace()).get_opt(name).await?)
    }

    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>> {
        Ok(Api::<ConfigMap>::namespaced(self.client.clone(), self.namespace()).get_opt(name).await?)
    }

    /// The process of `container`: its binary, arguments and environment, with listen
    /// addresses on all interfaces moved to the pod IP and mount paths to the Pod's folder.
    async fn process(&self, container: &Container, mounts: &BTreeMap<String, PathBuf>) -> Result<ProcessSpec> {
        let program = self.program(container)?;
        let mut args: Vec<String> = container.command.iter().flatten().skip(1).cloned().collect();
        args.extend(container.args.iter().flatten().cloned());
        let mut env = BTreeMap::new();
        for source in container.env_from.iter().flatten() {
            let prefix = source.prefix.clone().unwrap_or_default();
            let data = if let Some(reference) = &source.secret_ref {
                match self.secret(&reference.name).await? {
                    Some(secret) => secret_data(&secret),
                    None if reference.optional == Some(true) => BTreeMap::new(),
                    None => bail!("secret {} not found", reference.name),
                }
            } else if let Some(reference) = &source.config_map_ref {
                match self.config_map(&reference.name).await? {
                    Some(map) => map.data.unwrap_or_default(),
                    None if reference.optional == Some(true) => BTreeMap::new(),
                    None => bail!("configmap {} not found", reference.name),
                }
            } else {
                BTreeMap::new()
            };
            env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        }
        for variable in container.env.iter().flatten() {
            if let Some(value) = self.env_value(variable).await? {
                env.insert(variable.name.clone(), value);
            }
        }
        // $(VAR) references in values and arguments, as the kubelet expands them.
        let expanded: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.clone(), expand(v, &env))).collect();
        let args = args.iter().map(|a| self.relocate(&expand(a, &expanded), mounts)).collect();
        let mut env: BTreeMap<String, String> = expanded.into_iter().map(|(k, v)| (k, self.relocate(&v, mounts))).collect();
        env.insert("KUBECONFIG".into(), self.kubeconfig().await?.display().to_string());
        env.insert("HOME".into(), self.folder.display().to_string());
        if let Ok(path) = std::env::var("PATH") {
            env.entry("PATH".into()).or_insert(path);
        }
        Ok(ProcessSpec { program, args, env, workdir: self.folder.to_path_buf() })
    }

    /// The local binary standing in for the container's image (or its command).
    fn program(&self, container: &Container) -> Result<PathBuf> {
        let from_command = container.command.as_ref().and_then(|c| c.first()).map(|c| c.rsplit('/').next().unwrap_or(c).to_owned());
        let image = container.image.as_deref().unwrap_or_default();
        let from_image = image.rsplit('/').next().unwrap_or(image).split([':', '@']).next().unwrap_or_default().to_owned();
        let name = from_command.unwrap_or(from_image);
        self.binaries.get(&name).cloned().ok_or_else(|| anyhow!("no local binary stands in for image {image:?} ({name})"))
    }

    /// Listen addresses on all interfaces move to the pod IP; paths under a mount point move
    /// to the folder the mount was written to.
    fn relocate(&self, value: &str, mounts: &BTreeMap<String, PathBuf>) -> String {
        if let Some(port) = value.strip_prefix("0.0.0.0:").or_else(|| value.strip_prefix("[::]:")) {
            return format!("{}:{port}", self.pod_ip);
        }
        // (A volume mounted at `/` would claim every path: none is relocated for it.)
        for (mount_path, folder) in mounts.iter().rev().filter(|(path, _)| !path.is_empty()) {
            if let Some(rest) = value.strip_prefix(mount_path.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{rest}", folder.display());
                }
            }
        }
        value.to_owned()
    }

    async fn env_value(&self, variable: &EnvVar) -> Result<Option<String>> {
        let Some(source) = &variable.value_from else { return Ok(Some(variable.value.clone().unwrap_or_default())) };
        if let Some(field) = &source.field_ref {
            return Ok(Some(self.field(&field.field_path)?));
        }
        if let Some(key) = &source.secret_key_ref {
            let value = self.secret(&key.name).await?.and_then(|s| secret_data(&s).remove(&key.key));
            return match value {
                Some(value) => Ok(Some(value)),
                None if key.optional == Some(true) => Ok(None),
                None => bail!("key {} of secret {} not found", key.key, key.name),
            };
        }
        if let Some(key) = &source.config_map_key_ref {
            let value = self.config_map(&key.name).await?.and_then(|m| m.data.unwrap_or_default().remove(&key.key));
            return match value {
                Some(value) => Ok(Some(value)),
                None if key.optional == Some(true) => Ok(None),
                None => bail!("key {} of configmap {} not found", key.key, key.name),
            };
        }
        // resourceFieldRef: no limits are enforced here, so none are reported.
        Ok(None)
    }

    /// The downward API's fields.
    fn field(&self, path: &str) -> Result<String> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let from_map =
            |map: &Option<BTreeMap<String, String>>, key: &str| map.as_ref().and_then(|m| m.get(key).cloned()).unwrap_or_default();
        Ok(match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => self.namespace().to_owned(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => self.node_name.to_owned(),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
            "status.podIP" => self.pod_ip.to_owned(),
            "status.hostIP" => "127.0.0.1".to_owned(),
            _ => {
                if let Some(key) = path.strip_prefix("metadata.labels['").and_then(|k| k.strip_suffix("']")) {
                    from_map(&meta.labels, key)
                } else if let Some(key) = path.strip_prefix("metadata.annotations['").and_then(|k| k.strip_suffix("']")) {
                    from_map(&meta.annotations, key)
                } else {
                    bail!("downward API field {path} is not supported by the stand-in node")
                }
            }
        })
    }

    /// `container`'s process with its volumes written: what starting it needs.
    pub async fn spec(&self, container: &Container) -> Result<ProcessSpec> {
        let mounts = self.mounts(container).await?;
        self.process(container, &mounts).await
    }

    /// Writes the Pod's Secret, ConfigMap and emptyDir volumes into its folder; returns mount
    /// path -> folder for `container`.
    async fn mounts(&self, container: &Container) -> Result<BTreeMap<String, PathBuf>> {
        let volumes: BTreeMap<String, &Volume> =
            self.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).map(|v| (v.name.clone(), v)).collect();
        let mut mounts = BTreeMap::new();
        for mount in container.volume_mounts.iter().flatten() {
            if mount.mount_path.starts_with(SERVICE_ACCOUNT_MOUNT) {
                continue;
            }
            let volume = volumes.get(&mount.name).ok_or_else(|| anyhow!("volume {} not declared", mount.name))?;
            let folder = self.folder.join("volumes").join(&volume.name);
            self.write_volume(volume, &folder).await?;
            let folder = match &mount.sub_path {
                Some(sub) if !sub.is_empty() => folder.join(sub),
                _ => folder,
            };
            mounts.insert(mount.mount_path.trim_end_matches('/').to_owned(), folder);
        }
        Ok(mounts)
    }

    async fn write_volume(&self, volume: &Volume, folder: &Path) -> Result<()> {
        std::fs::create_dir_all(folder)?;
        let files: BTreeMap<String, String> = if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            match self.secret(&name).await? {
                Some(secret) => {
                    select(secret_data(&secret), source.items.as_ref().map(|i| i.iter().map(|i| (i.key.clone(), i.path.clone())).collect()))
                }
                None if source.optional == Some(true) => BTreeMap::new(),
                None => bail!("secret {name} of volume {} not found", volume.name),
            }
        } else if let Some(source) = &volume.config_map {
            match self.config_map(&source.name).await? {
                Some(map) => select(
                    map.data.unwrap_or_default(),
                    source.items.as_ref().map(|i| i.iter().map(|i| (i.key.clone(), i.path.clone())).collect()),
                ),
                None if source.optional == Some(true) => BTreeMap::new(),
                None => bail!("configmap {} of volume {} not found", source.name, volume.name),
            }
        } else if volume.empty_dir.is_some() || volume.projected.is_some() {
            // emptyDir: the folder itself. projected: only the service-account token volume
            // is projected here, and KUBECONFIG replaces it.
            BTreeMap::new()
        } else {
            bail!("volume {} has a type the stand-in node does not support", volume.name)
        };
        for (path, content) in files {
            let file = folder.join(&path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, content).with_context(|| format!("write {}", file.display()))?;
        }
        Ok(())
    }

    /// A kubeconfig with a token the API server issues for the Pod's ServiceAccount, bound to
    /// the Pod (it stops working when the Pod is deleted), as the in-cluster mount would hold.
    async fn kubeconfig(&self) -> Result<PathBuf> {
        let account = self.pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(24 * 3600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: self.pod.metadata.name.clone(),
                    uid: self.pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let accounts = Api::<ServiceAccount>::namespaced(self.client.clone(), self.namespace());
        let name = account.clone();
        let issued: TokenRequest = accounts
            .create_subresource("token", &name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for serviceaccount {account}"))?;
        let token = issued.status.map(|s| s.token).ok_or_else(|| anyhow!("TokenRequest answered without a token"))?;
        let config = Kubeconfig {
            clusters: vec![NamedCluster {
                name: "cluster".into(),
                cluster: Some(Cluster {
                    server: Some(self.server.to_owned()),
                    certificate_authority_data: Some(base64(self.ca_pem.as_bytes())),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: account.clone(),
                auth_info: Some(AuthInfo { token: Some(token.into()), ..Default::default() }),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: "pod".into(),
                context: Some(KubeContext {
                    cluster: "cluster".into(),
                    user: Some(account),
                    namespace: Some(self.namespace().to_owned()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some("pod".into()),
            ..Default::default()
        };
        let path = self.folder.join("kubeconfig");
        std::fs::write(&path, serde_saphyr::to_string(&config)?)?;
        Ok(path)
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> =
        secret.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned())).collect();
    data.extend(secret.string_data.clone().unwrap_or_default());
    data
}

/// All keys, or only `items` (key -> path) when given.
fn select(data: BTreeMap<String, String>, items: Option<Vec<(String, String)>>) -> BTreeMap<String, String> {
    match items {
        None => data,
        Some(items) => items.into_iter().filter_map(|(key, path)| data.get(&key).map(|v| (path, v.clone()))).collect(),
    }
}

/// `$(NAME)` replaced by NAME's value when defined; `$$` escapes, as in the kubelet.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_like_the_kubelet() {
        let env = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }
}
