//! The local control plane that `dev/stack up kube` starts: a real kube-apiserver (admission,
//! CEL, pruning, RBAC, namespace lifecycle), kube-controller-manager and the stand-in node.
//! Tests reach it with its admin kubeconfig, work in namespaces of their own, and act as the
//! chart's ServiceAccounts with tokens the server issues, so its authorizer decides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use serde_json::{json, Value};

use crate::wait_until;

mod namespaced;
pub mod operator;
pub use namespaced::{NamespacedCluster, Recorded};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

/// `COUPON_KUBECONFIG`, else the admin kubeconfig `dev/kube up` writes.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("COUPON_KUBECONFIG").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".dev/kube/kubeconfig"))
}

/// A binary `tests/kube/build` made (kubectl, helm), linked in `.dev/bin/`.
pub fn tool(name: &str) -> PathBuf {
    let path = workspace_root().join(".dev/bin").join(name);
    assert!(path.exists(), "{} is missing: run `dev/stack up kube` (it builds the local control plane)", path.display());
    path
}

/// The running local control plane.
#[derive(Clone)]
pub struct LocalCluster {
    pub admin: kube::Client,
    kubeconfig: Kubeconfig,
}

impl LocalCluster {
    /// Connects as admin; fails the test (never skips it) when the control plane is not up.
    pub async fn connect() -> Self {
        let path = kubeconfig_path();
        let kubeconfig = Kubeconfig::read_from(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; start the local control plane with `dev/stack up kube`", path.display()));
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default()).await.expect("admin kubeconfig");
        let admin = kube::Client::try_from(config).expect("admin client");
        admin.apiserver_version().await.unwrap_or_else(|e| panic!("the local API server does not answer ({e}); run `dev/stack up kube`"));
        Self { admin, kubeconfig }
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(tool("kubectl"));
        command.env("KUBECONFIG", kubeconfig_path());
        command
    }

    /// A namespace of the test's own, named after `prefix`.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = crate::unique(prefix);
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"coupons.fcfs.dev/test": "true"}}})).unwrap();
        Api::<Namespace>::all(self.admin.clone()).create(&PostParams::default(), &namespace).await.expect("create namespace");
        // The serviceaccount controller makes `default` in it; Pods need it to be admitted.
        let accounts = Api::<ServiceAccount>::namespaced(self.admin.clone(), &name);
        wait_until("the namespace's default ServiceAccount", Duration::from_secs(30), || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten().map(|_| ()) }
        })
        .await;
        name
    }

    /// Deletes a namespace and waits until the namespace controller has removed it.
    pub async fn delete_namespace(&self, name: &str, timeout: Duration) {
        let namespaces = Api::<Namespace>::all(self.admin.clone());
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
        wait_until(&format!("namespace {name} gone"), timeout, || {
            let namespaces = namespaces.clone();
            async move { namespaces.get_opt(name).await.ok().and_then(|n| n.is_none().then_some(())) }
        })
        .await;
    }

    /// Server-side applies `crds/` (as `kubectl apply --server-side -f crds/` does) and waits
    /// until the CouponEvent kind is served.
    pub async fn install_crd(&self) {
        let text = std::fs::read_to_string(workspace_root().join("crds/couponevents.coupons.fcfs.dev.yaml")).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
        self.apply_crd(&crd).await;
    }

    /// Server-side applies a CRD (forcing ownership: tests also install older ones) and waits
    /// until it is Established.
    pub async fn apply_crd(&self, crd: &CustomResourceDefinition) {
        let crds = Api::<CustomResourceDefinition>::all(self.admin.clone());
        let name = crd.metadata.name.clone().unwrap();
        let mut crd = crd.clone();
        crd.metadata.resource_version = None;
        crds.patch(&name, &PatchParams::apply("coupon-tests").force(), &Patch::Apply(&crd)).await.expect("apply the CRD");
        wait_until("the CRD established", Duration::from_secs(30), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await;
    }

    /// A ServiceAccount in `namespace` bound to the chart's operator rules there (as the
    /// chart's namespaced Role and its leader-election Role grant them).
    pub async fn operator_account(&self, namespace: &str, account: &str) {
        let accounts = Api::<ServiceAccount>::namespaced(self.admin.clone(), namespace);
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
        accounts.create(&PostParams::default(), &sa).await.expect("create ServiceAccount");
        self.bind_operator_rules(namespace, namespace, account).await;
        // The chart's cluster-wide, read-only rules, as its ClusterRole grants them.
        let rules = chart_rules("files/operator-namespace-rules.yaml");
        self.bind_cluster_role(&format!("{namespace}-{account}"), rules, namespace, account).await;
    }

    /// A ClusterRole `name` with `rules`, bound to the ServiceAccount `sa_namespace/account`.
    async fn bind_cluster_role(&self, name: &str, rules: Vec<PolicyRule>, sa_namespace: &str, account: &str) {
        let role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
        Api::<ClusterRole>::all(self.admin.clone()).create(&PostParams::default(), &role).await.expect("create ClusterRole");
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": sa_namespace}],
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(self.admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("create ClusterRoleBinding");
    }

    /// A Role in `namespace` with the chart's operator rules (and leader-election rules),
    /// bound to the ServiceAccount `sa_namespace/account`: an operator of another namespace
    /// that manages this one's CouponEvents.
    pub async fn bind_operator_rules(&self, namespace: &str, sa_namespace: &str, account: &str) {
        let mut rules = chart_rules("files/operator-rules.yaml");
        rules.extend(chart_rules("files/operator-leader-election-rules.yaml"));
        let name = format!("{sa_namespace}-{account}");
        let role: Role = serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
        Api::<Role>::namespaced(self.admin.clone(), namespace).create(&PostParams::default(), &role).await.expect("create Role");
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": sa_namespace}],
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &binding)
            .await
            .expect("create RoleBinding");
    }

    /// A ClusterRole with the chart's operator rules and its rules for a namespace selector,
    /// bound to the ServiceAccount `sa_namespace/account`: an operator that watches every
    /// namespace, as the chart's ClusterRole with `operator.watchAllNamespaces` grants it.
    pub async fn bind_operator_rules_cluster_wide(&self, sa_namespace: &str, account: &str) {
        let mut rules = chart_rules("files/operator-rules.yaml");
        rules.extend(chart_rules("files/operator-namespace-selector-rules.yaml"));
        self.bind_cluster_role(&format!("{sa_namespace}-{account}-everywhere"), rules, sa_namespace, account).await;
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        self.kubeconfig.clusters.iter().find_map(|c| c.cluster.as_ref()?.server.clone()).expect("server in kubeconfig")
    }

    /// The admin kubeconfig with its user replaced by a token the API server issues
    /// (TokenRequest) for `namespace/account`, as a Pod of that ServiceAccount would hold.
    pub async fn kubeconfig_with_token(&self, namespace: &str, account: &str) -> Kubeconfig {
        let accounts = Api::<ServiceAccount>::namespaced(self.admin.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), bound_object_ref: None },
            ..Default::default()
        };
        let issued: TokenRequest =
            accounts.create_subresource("token", account, &PostParams::default(), &request).await.expect("TokenRequest");
        let token = issued.status.expect("token").token;
        let mut kubeconfig = self.kubeconfig.clone();
        let auth = kubeconfig.auth_infos.first_mut().and_then(|a| a.auth_info.as_mut()).expect("kubeconfig user");
        *auth = serde_json::from_value(json!({"token": token})).unwrap();
        kubeconfig
    }

    /// A client that authenticates as `namespace/account`.
    pub async fn client_as(&self, namespace: &str, account: &str) -> kube::Client {
        let kubeconfig = self.kubeconfig_with_token(namespace, account).await;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("token kubeconfig");
        kube::Client::try_from(config).expect("token client")
    }

    /// The requests the audit log recorded for users `of_user` accepts (the admin's and the
    /// control plane's own reads are not recorded).
    pub fn audited(&self, of_user: impl Fn(&str) -> bool) -> Vec<Audited> {
        let text = audit_log();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["stage"] == "ResponseComplete" && of_user(entry["user"]["username"].as_str().unwrap_or_default()))
            .map(|entry| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let object = &entry["objectRef"];
                Audited {
                    user: text(&entry["user"]["username"]),
                    verb: text(&entry["verb"]),
                    uri: text(&entry["requestURI"]),
                    group: text(&object["apiGroup"]),
                    resource: text(&object["resource"]),
                    subresource: text(&object["subresource"]),
                    name: text(&object["name"]),
                    code: entry["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
                    body: entry["requestObject"].clone(),
                    at: entry["requestReceivedTimestamp"].as_str().and_then(|t| t.parse().ok()),
                }
            })
            .collect()
    }
}

/// The API server's audit log beside the kubeconfig (`dev/kube` writes both), its rotated
/// backups first. Missing, it fails the test: an empty log would make every "nothing
/// refused" check pass without looking.
fn audit_log() -> String {
    let folder = kubeconfig_path().parent().map(Path::to_path_buf).unwrap_or_default();
    let current = folder.join("audit.log");
    let mut backups: Vec<PathBuf> = std::fs::read_dir(&folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log")))
        .collect();
    backups.sort();
    let mut text = String::new();
    for backup in backups {
        text.push_str(&std::fs::read_to_string(&backup).unwrap_or_default());
    }
    text.push_str(
        &std::fs::read_to_string(&current)
            .unwrap_or_else(|e| panic!("{}: {e}; the tests read the API server's audit log", current.display())),
    );
    text
}

/// One request the API server audited.
#[derive(Debug, Clone)]
pub struct Audited {
    pub user: String,
    pub verb: String,
    /// The request's path and query.
    pub uri: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub code: u16,
    /// The request's body, where the audit policy keeps it (scale writes).
    pub body: Value,
    pub at: Option<k8s_openapi::jiff::Timestamp>,
}

impl Audited {
    /// The HTTP method of the request.
    pub fn method(&self) -> String {
        match self.verb.as_str() {
            "create" => "POST",
            "update" => "PUT",
            "patch" => "PATCH",
            "delete" | "deletecollection" => "DELETE",
            _ => "GET",
        }
        .to_owned()
    }

    /// The request's path, without its query.
    pub fn path(&self) -> String {
        self.uri.split('?').next().unwrap_or_default().to_owned()
    }
}

/// The RBAC rules in one of the chart's `files/`.
pub fn chart_rules(file: &str) -> Vec<PolicyRule> {
    let text = std::fs::read_to_string(workspace_root().join("charts/coupon-system").join(file)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The user name a ServiceAccount's token authenticates as.
pub fn service_account_user(namespace: &str, account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{account}")
}
