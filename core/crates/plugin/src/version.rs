//! Plugin API versions and worlds: which `medrl:plugin@X.Y.Z` a component targets and which
//! world it exports ([`World`]), both read from its type before anything is instantiated, and
//! the world handles (pre-instances and instances) of each supported version, so the rest of the
//! host calls every version the same way.

use wasmtime::component::Component;
use wasmtime::{Engine, Store};

use super::bindings::adapter::{DataAdapter, DataAdapterPre};
use super::bindings::reward::{Reward, RewardPre};
use super::bindings::v02;
use super::bindings::v03;
use super::bindings::Manifest;
use super::error::{PluginError, PluginId};
use super::sandbox::HostState;

/// API versions (WIT package `medrl:plugin@X.Y.Z`) this host can run.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0"];
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

/// The kinds of plugin, one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `reward`: scores responses (every API version).
    Reward,
    /// `data-adapter`: converts raw records into training examples (every API version).
    DataAdapter,
    /// `tool`: a tool a model calls during a rollout (API 0.3.0 on).
    Tool,
}

impl World {
    /// The world's name in the WIT.
    pub fn name(self) -> &'static str {
        match self {
            World::Reward => "reward",
            World::DataAdapter => "data-adapter",
            World::Tool => "tool",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which world a component exports, by the names of its exported functions (each world has one
/// the others lack); `None` when it exports none of them (then binding it fails as invalid).
pub(crate) fn world_of(engine: &Engine, component: &Component) -> Option<World> {
    let ty = component.component_type();
    let names: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    if has("call") && has("tool-spec") {
        Some(World::Tool)
    } else if has("score-batch") || has("score") {
        Some(World::Reward)
    } else if has("convert") {
        Some(World::DataAdapter)
    } else {
        None
    }
}

/// Refuses a component of another world than the one it is loaded as.
pub(crate) fn expect_world(
    id: &PluginId,
    expected: World,
    found: Option<World>,
) -> Result<(), PluginError> {
    match found {
        Some(found) if found != expected => Err(PluginError::WrongWorld {
            plugin: id.clone(),
            expected: expected.name(),
            found: found.name(),
        }),
        _ => Ok(()),
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
    V03(v03::reward::RewardPre<HostState>),
}

/// A reward world's instance, by API version.
pub(crate) enum AnyReward {
    V01(Reward),
    V02(v02::reward::Reward),
    V03(v03::reward::Reward),
}

impl AnyReward {
    pub(crate) fn manifest(&self, store: &mut Store<HostState>) -> wasmtime::Result<Manifest> {
        match self {
            AnyReward::V01(i) => i.call_manifest(store),
            AnyReward::V02(i) => i.call_manifest(store).map(v02::manifest),
            AnyReward::V03(i) => i.call_manifest(store).map(v03::manifest),
        }
    }
}

pub(crate) enum AnyAdapterPre {
    V01(DataAdapterPre<HostState>),
    V02(v02::adapter::DataAdapterPre<HostState>),
    V03(v03::adapter::DataAdapterPre<HostState>),
}

impl AnyAdapterPre {
    pub(crate) fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<AnyAdapter> {
        Ok(match self {
            AnyAdapterPre::V01(p) => AnyAdapter::V01(p.instantiate(store)?),
            AnyAdapterPre::V02(p) => AnyAdapter::V02(p.instantiate(store)?),
            AnyAdapterPre::V03(p) => AnyAdapter::V03(p.instantiate(store)?),
        })
    }
}

pub(crate) enum AnyAdapter {
    V01(DataAdapter),
    V02(v02::adapter::DataAdapter),
    V03(v03::adapter::DataAdapter),
}

impl AnyAdapter {
    pub(crate) fn manifest(&self, store: &mut Store<HostState>) -> wasmtime::Result<Manifest> {
        match self {
            AnyAdapter::V01(i) => i.call_manifest(store),
            AnyAdapter::V02(i) => i.call_manifest(store).map(v02::manifest),
            AnyAdapter::V03(i) => i.call_manifest(store).map(v03::manifest),
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
            AnyAdapter::V03(i) => i.call_convert(store, config, records),
        }
    }
}
