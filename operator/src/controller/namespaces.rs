//! Which namespaces' CouponEvents the operator acts on when it watches them all.
//!
//! With `NAMESPACE_SELECTOR`, only the events of namespaces whose labels match it: a tenant
//! whose namespace lacks the labels cannot make the operator create topics, Redis keys or
//! replicas. The chart's admission policy refuses new events there too, but an event created
//! before the policy, or before its namespace lost the labels, reaches the operator all the
//! same; this is what keeps it alone.
//!
//! An event outside the selection is left entirely alone: no finalizer, no status, no
//! clean-up on deletion (a namespace-scoped release in that namespace may own it, and shares
//! the finalizer's name). So a namespace that lost its labels while it held events this
//! operator provisioned cannot be deleted until the labels are back (or the finalizer is
//! removed by hand); the operator logs a warning for each such deletion. Putting the labels
//! back hands the events to the operator again at once, since a namespace entering or leaving
//! the selection triggers a reconcile of its events.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::crd::CouponEvent;

/// What watching the selected namespaces needs, `(api group, resource, verbs)`: granted
/// only to an operator given a selector (the chart's `operator-namespace-selector-rules`).
pub const SELECTOR_PERMISSIONS: (&str, &str, &[&str]) = ("", "namespaces", &["list", "watch"]);

/// The namespaces whose events the operator acts on.
#[derive(Clone, Default)]
pub enum NamespaceSelection {
    /// Every namespace watched (one namespace, or all without a selector).
    #[default]
    Every,
    /// Those in this cache: a watch of the namespaces the selector matches.
    Labelled(Store<Namespace>),
}

impl NamespaceSelection {
    /// Whether the operator acts on the events of `namespace`. Before the cache has listed,
    /// no namespace is selected: its first list then triggers a reconcile of their events.
    pub fn admits(&self, namespace: &str) -> bool {
        match self {
            Self::Every => true,
            Self::Labelled(namespaces) => namespaces.get(&ObjectRef::new(namespace)).is_some(),
        }
    }

    /// The selection for the label `selector`, the stream of namespaces entering or leaving
    /// it, and a stream that ticks each time the watch has listed them all (poll both for as
    /// long as the selection is used: they keep the cache current).
    ///
    /// The tick is there because a list lands in the cache only once complete: a namespace
    /// reported while a list is under way is not in the cache yet when its events are
    /// reconciled, and they are left alone; every event is looked at again once it is.
    pub fn watch(
        client: Client,
        selector: &str,
    ) -> (Self, impl Stream<Item = Result<Namespace, watcher::Error>> + Send + 'static, impl Stream<Item = ()> + Send + 'static) {
        let (namespaces, writer) = reflector::store();
        let (listed, ticks) = futures::channel::mpsc::unbounded();
        // A watch with a label selector reports a namespace that stops matching as deleted,
        // so leaving the selection is seen like entering it.
        let changes = watcher(Api::<Namespace>::all(client), watcher::Config::default().labels(selector).any_semantic())
            .default_backoff()
            .modify(|namespace| namespace.managed_fields_mut().clear())
            .reflect(writer)
            .inspect(move |change| match change {
                Ok(watcher::Event::InitDone) => {
                    let _ = listed.unbounded_send(());
                }
                Err(error) => tracing::warn!(%error, "watch of the selected namespaces failed; retrying"),
                Ok(_) => {}
            })
            .touched_objects();
        (Self::Labelled(namespaces), changes, ticks)
    }
}

/// The events of `namespace` in `events`: what a namespace entering or leaving the
/// selection asks to be looked at again.
pub fn events_in(events: &Store<CouponEvent>, namespace: &Namespace) -> Vec<ObjectRef<CouponEvent>> {
    let name = namespace.name_any();
    events
        .state()
        .iter()
        .filter(|event| event.namespace().as_deref() == Some(name.as_str()))
        .map(|event| ObjectRef::from_obj(event.as_ref()))
        .collect()
}

/// Refuses, at start, a selector the API server cannot parse (it would otherwise fail every
/// watch, retried for ever) and an operator not allowed to list namespaces (it would act on
/// nothing while looking healthy). Any other failure (the API server out of reach) is left
/// to the watch, which retries and logs.
pub async fn check_selector(client: Client, selector: &str) -> Result<(), String> {
    let namespaces = Api::<Namespace>::all(client);
    match namespaces.list_metadata(&ListParams::default().labels(selector).limit(1)).await {
        Err(kube::Error::Api(status)) if status.code == 400 => {
            Err(format!("NAMESPACE_SELECTOR {selector:?} is not a label selector: {}", status.message))
        }
        Err(kube::Error::Api(status)) if status.code == 403 => Err(format!(
            "NAMESPACE_SELECTOR needs the right to list and watch namespaces (the chart grants it with operator.namespaceSelector): {}",
            status.message
        )),
        Err(error) => {
            tracing::warn!(%error, "cannot check NAMESPACE_SELECTOR yet; the watch will retry");
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}
