//! `PluginHost::inspect`: the one call that does not know which kind of plugin it loads, so it
//! sits above both kinds (`pool` for rewards, `adapter` for data adapters).

use std::path::Path;

use super::bindings::Manifest;
use super::engine::PluginHost;
use super::error::PluginError;
use super::limits::PluginOptions;

impl PluginHost {
    /// Reads a component's manifest and API version without scoring anything.
    pub fn inspect(&self, path: &Path) -> Result<(Manifest, String), PluginError> {
        let plugin = self.load_reward(path, PluginOptions::default());
        match plugin {
            Ok(p) => Ok((p.manifest().clone(), p.manifest().api_version.clone())),
            // Not a reward world: maybe an adapter.
            Err(PluginError::InvalidWasm { .. })
                if self.load_adapter(path, PluginOptions::default()).is_ok() =>
            {
                let a = self.load_adapter(path, PluginOptions::default())?;
                Ok((a.manifest().clone(), a.manifest().api_version.clone()))
            }
            Err(e) => Err(e),
        }
    }
}
