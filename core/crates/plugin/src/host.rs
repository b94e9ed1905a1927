//! `PluginHost::inspect`: the one call that does not know which kind of plugin it loads, so it
//! sits above every kind (`pool` for rewards, `adapter` for data adapters, `tool` for tools).

use std::path::Path;

use super::bindings::Manifest;
use super::engine::PluginHost;
use super::error::PluginError;
use super::limits::PluginOptions;
use super::tool::ToolSpec;
use super::version::World;

/// What a component says about itself (`medrl plugin inspect`).
#[derive(Debug, Clone)]
pub struct Inspection {
    pub world: World,
    pub manifest: Manifest,
    pub api_version: String,
    /// A tool's checked spec; `None` for other worlds.
    pub tool: Option<ToolSpec>,
}

impl PluginHost {
    /// Reads a component's manifest and API version without scoring anything.
    pub fn inspect(&self, path: &Path) -> Result<(Manifest, String), PluginError> {
        self.inspect_plugin(path)
            .map(|i| (i.manifest, i.api_version))
    }

    /// Loads a component as whichever kind of plugin it is (instantiating it, so the
    /// manifest and, for a tool, the spec are checked as a run would check them) and reports
    /// what it says about itself.
    pub fn inspect_plugin(&self, path: &Path) -> Result<Inspection, PluginError> {
        let opts = PluginOptions::default;
        let world = match self.load_reward(path, opts()) {
            Ok(p) => return Ok(inspection(World::Reward, p.manifest().clone(), None)),
            Err(PluginError::WrongWorld { found, .. }) => found,
            Err(e) => return Err(e),
        };
        if world == World::DataAdapter.name() {
            let a = self.load_adapter(path, opts())?;
            Ok(inspection(World::DataAdapter, a.manifest().clone(), None))
        } else {
            let t = self.load_tool(path, &serde_json::json!({}), opts())?;
            let spec = t.spec().clone();
            Ok(inspection(World::Tool, t.manifest().clone(), Some(spec)))
        }
    }
}

fn inspection(world: World, manifest: Manifest, tool: Option<ToolSpec>) -> Inspection {
    Inspection {
        world,
        api_version: manifest.api_version.clone(),
        manifest,
        tool,
    }
}
