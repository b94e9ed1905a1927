//! Plugin API versions: which `medrl:plugin@X.Y.Z` a component targets, read from its type
//! before anything is instantiated, and the world handles (pre-instances and instances) of each
//! supported version, so the rest of the host calls either version the same way.

use wasmtime::component::Component;
use wasmtime::{Engine, Store};

use super::bindings::adapter::{DataAdapter, DataAdapterPre};
use super::bindings::reward::{Reward, RewardPre};
use super::bindings::v02;
use super::bindings::Manifest;
use super::error::{PluginError, PluginId};
use super::sandbox::HostState;

/// API versions (WIT package `medrl:plugin@X.Y.Z`) this host can run.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];
const API_PACKAGE: &str = "medrl:plugin/";

/// Finds the plugin API version from the component's imports and exports
/// (`medrl:plugin/<interface>@X.Y.Z`) before anything is instantiated.
pub(crate) fn api_version(
    engine: &Engine,
    component: &Component,
    id: &PluginId,
) -> Result<String, PluginError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()))
        .collect();
    let mut found: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix(API_PACKAGE))
        .map(|rest| {
            rest.split_once('@')
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| "unversioned".into())
        })
        .collect();
    found.sort();
    found.dedup();
    let supported: Vec<String> = SUPPORTED_API_VERSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    match found.as_slice() {
        [v] if SUPPORTED_API_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        [] => Err(PluginError::IncompatibleApi {
            plugin: id.clone(),
            found: format!(
                "none (the component uses no medrl:plugin interface; it imports [{}])",
                names.join(", ")
            ),
            supported,
        }),
        _ => Err(PluginError::IncompatibleApi {
            plugin: id.clone(),
            found: found.join(" + "),
            supported,
        }),
    }
}

pub(crate) fn incompatible(id: &PluginId, found: &str) -> PluginError {
    PluginError::IncompatibleApi {
        plugin: id.clone(),
        found: found.into(),
        supported: SUPPORTED_API_VERSIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

/// A reward world's pre-instance, by API version.
pub(crate) enum AnyRewardPre {
    V01(RewardPre<HostState>),
    V02(v02::reward::RewardPre<HostState>),
}

/// A reward world's instance, by API version.
pub(crate) enum AnyReward {
    V01(Reward),
    V02(v02::reward::Reward),
}

impl AnyReward {
    pub(crate) fn manifest(&self, store: &mut Store<HostState>) -> wasmtime::Result<Manifest> {
        match self {
            AnyReward::V01(i) => i.call_manifest(store),
            AnyReward::V02(i) => i.call_manifest(store).map(v02::manifest),
        }
    }
}

pub(crate) enum AnyAdapterPre {
    V01(DataAdapterPre<HostState>),
    V02(v02::adapter::DataAdapterPre<HostState>),
}

impl AnyAdapterPre {
    pub(crate) fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<AnyAdapter> {
        Ok(match self {
            AnyAdapterPre::V01(p) => AnyAdapter::V01(p.instantiate(store)?),
            AnyAdapterPre::V02(p) => AnyAdapter::V02(p.instantiate(store)?),
        })
    }
}

pub(crate) enum AnyAdapter {
    V01(DataAdapter),
    V02(v02::adapter::DataAdapter),
}

impl AnyAdapter {
    pub(crate) fn manifest(&self, store: &mut Store<HostState>) -> wasmtime::Result<Manifest> {
        match self {
            AnyAdapter::V01(i) => i.call_manifest(store),
            AnyAdapter::V02(i) => i.call_manifest(store).map(v02::manifest),
        }
    }
    /// One result per record, as the WIT types it: an error is the guest's own text.
    pub(crate) fn convert(
        &self,
        store: &mut Store<HostState>,
        config: &str,
        records: &[String],
    ) -> wasmtime::Result<Vec<Result<String, String>>> {
        match self {
            AnyAdapter::V01(i) => i.call_convert(store, config, records),
            AnyAdapter::V02(i) => i.call_convert(store, config, records),
        }
    }
}
