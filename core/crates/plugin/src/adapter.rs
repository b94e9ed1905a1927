//! Data-adapter plugins: loading one, and converting raw records into training examples on one
//! store (re-created after a failed call).

use std::path::Path;
use std::sync::Mutex;

use wasmtime::Store;

use super::bindings::adapter::DataAdapterPre;
use super::bindings::{v02, v03};
use super::bindings::Manifest;
use super::engine::{read_component, PluginHost};
use super::error::{clip, PluginError};
use super::limits::PluginOptions;
use super::policy::MetricsSnapshot;
use super::runner::Runner;
use super::sandbox::HostState;
use super::version::{expect_world, incompatible, AnyAdapter, AnyAdapterPre, World};

impl PluginHost {
    /// Loads a data-adapter plugin from a `.wasm` component file.
    pub fn load_adapter(
        &self,
        path: &Path,
        opts: PluginOptions,
    ) -> Result<AdapterPlugin, PluginError> {
        let (bytes, id) = read_component(path)?;
        let (pre, version, world) = self.link(&bytes, &id)?;
        expect_world(&id, World::DataAdapter, world)?;
        let not_adapter = |e: wasmtime::Error| PluginError::InvalidWasm {
            plugin: id.clone(),
            reason: format!("does not export the `data-adapter` world of API {version}: {e:#}"),
        };
        let pre = match version.as_str() {
            "0.1.0" => AnyAdapterPre::V01(DataAdapterPre::new(pre).map_err(not_adapter)?),
            "0.2.0" => {
                AnyAdapterPre::V02(v02::adapter::DataAdapterPre::new(pre).map_err(not_adapter)?)
            }
            "0.3.0" => {
                AnyAdapterPre::V03(v03::adapter::DataAdapterPre::new(pre).map_err(not_adapter)?)
            }
            // api_version() only returns supported versions; this arm is a version added to
            // SUPPORTED_API_VERSIONS without bindings.
            other => return Err(incompatible(&id, other)),
        };
        let runner = Runner::new(self.clone(), id, opts)?;
        let mut store = runner.new_store();
        let inst = runner.guarded(&mut store, |s| pre.instantiate(s))?;
        let mut manifest = runner.guarded(&mut store, |s| inst.manifest(s))?;
        let id = runner.adopt_manifest(&mut manifest, &version, &mut store)?;
        let runner = Runner { id, ..runner };
        Ok(AdapterPlugin {
            runner,
            manifest,
            inst: Mutex::new(Some((store, inst))),
            pre,
        })
    }
}

/// A loaded data-adapter plugin. Conversion is a one-off preprocessing step, so calls are
/// serialized on one store (re-created after a trap).
pub struct AdapterPlugin {
    runner: Runner,
    manifest: Manifest,
    pre: AnyAdapterPre,
    inst: Mutex<Option<(Store<HostState>, AnyAdapter)>>,
}

impl AdapterPlugin {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn metrics(&self) -> MetricsSnapshot {
        self.runner.metrics.snapshot()
    }

    /// Converts raw JSON records to training examples (JSON values). The outer `Err` is a
    /// failed call; inner errors are per record.
    pub fn convert(
        &self,
        config: &serde_json::Value,
        records: &[String],
    ) -> Result<Vec<Result<serde_json::Value, PluginError>>, PluginError> {
        let r = &self.runner;
        let mut guard = self.inst.lock().unwrap();
        if guard.is_none() {
            let mut store = r.new_store();
            let inst = r.guarded(&mut store, |s| self.pre.instantiate(s))?;
            *guard = Some((store, inst));
        }
        let (store, inst) = guard.as_mut().expect("filled above");
        let cfg = config.to_string();
        let res = r.guarded(store, |s| inst.convert(s, &cfg, records));
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                *guard = None;
                r.metrics.failure(e.kind(), records.len() as u64);
                return Err(e);
            }
        };
        let plugin = &r.id;
        if out.len() != records.len() {
            let e = PluginError::BadOutput {
                plugin: plugin.clone(),
                reason: format!(
                    "returned {} results for {} records",
                    out.len(),
                    records.len()
                ),
            };
            r.metrics.failure(e.kind(), records.len() as u64);
            return Err(e);
        }
        Ok(out
            .into_iter()
            .map(|x| match x {
                Ok(text) => serde_json::from_str(&text).map_err(|e| PluginError::BadOutput {
                    plugin: plugin.clone(),
                    reason: format!("example is not JSON: {e}"),
                }),
                Err(message) => Err(PluginError::GuestError {
                    plugin: plugin.clone(),
                    message: clip(message),
                }),
            })
            .inspect(|x| {
                if let Err(e) = x {
                    r.metrics.failure(e.kind(), 1);
                }
            })
            .collect())
    }
}
