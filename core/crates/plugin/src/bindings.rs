//! Host-side bindings generated from the WIT in `reward-sdk/wit/` (the source of truth), one
//! module per supported API version. The rest of medrl sees only the 0.1.0 record types
//! re-exported at the bottom: results of 0.2.0 plugins are converted into them (checks.rs).

pub mod reward {
    wasmtime::component::bindgen!({
        path: "../../../reward-sdk/wit/v0.1",
        world: "reward",
    });
}

pub mod adapter {
    wasmtime::component::bindgen!({
        path: "../../../reward-sdk/wit/v0.1",
        world: "data-adapter",
        // Share interface types and host traits with the reward world.
        with: {
            "medrl:plugin/types": super::reward::medrl::plugin::types,
            "medrl:plugin/host": super::reward::medrl::plugin::host,
            "medrl:plugin/judge": super::reward::medrl::plugin::judge,
            "medrl:plugin/search": super::reward::medrl::plugin::search,
        },
    });
}

/// API 0.2.0: batch-shaped reward export (one string + offsets per call, flat results).
pub mod v02 {
    pub mod reward {
        wasmtime::component::bindgen!({
            path: "../../../reward-sdk/wit/v0.2",
            world: "reward",
        });
    }

    pub mod adapter {
        wasmtime::component::bindgen!({
            path: "../../../reward-sdk/wit/v0.2",
            world: "data-adapter",
            with: {
                "medrl:plugin/types": super::reward::medrl::plugin::types,
                "medrl:plugin/host": super::reward::medrl::plugin::host,
                "medrl:plugin/judge": super::reward::medrl::plugin::judge,
                "medrl:plugin/search": super::reward::medrl::plugin::search,
            },
        });
    }

    pub use reward::medrl::plugin::types::{BatchScores, Manifest, SampleBatch};

    /// The host-side manifest type (0.1.0's record; both versions have the same fields).
    pub fn manifest(m: Manifest) -> super::Manifest {
        use reward::medrl::plugin::types::Capability as C2;
        super::Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            config_schema: m.config_schema,
            capabilities: m
                .capabilities
                .into_iter()
                .map(|c| match c {
                    C2::Judge => super::Capability::Judge,
                    C2::Search => super::Capability::Search,
                })
                .collect(),
            api_version: m.api_version,
        }
    }
}

/// API 0.3.0: the reward and data-adapter worlds of 0.2.0 under the new package version, and
/// the `tool` world. Its types are structurally those of 0.2.0, so results are moved into the
/// 0.2.0 types (no copy) and checked by the same code.
pub mod v03 {
    pub mod reward {
        wasmtime::component::bindgen!({
            path: "../../../reward-sdk/wit/v0.3",
            world: "reward",
        });
    }

    pub mod adapter {
        wasmtime::component::bindgen!({
            path: "../../../reward-sdk/wit/v0.3",
            world: "data-adapter",
            with: {
                "medrl:plugin/types": super::reward::medrl::plugin::types,
                "medrl:plugin/host": super::reward::medrl::plugin::host,
                "medrl:plugin/judge": super::reward::medrl::plugin::judge,
                "medrl:plugin/search": super::reward::medrl::plugin::search,
            },
        });
    }

    pub mod tool {
        wasmtime::component::bindgen!({
            path: "../../../reward-sdk/wit/v0.3",
            world: "tool",
            with: {
                "medrl:plugin/types": super::reward::medrl::plugin::types,
                "medrl:plugin/host": super::reward::medrl::plugin::host,
                "medrl:plugin/judge": super::reward::medrl::plugin::judge,
                "medrl:plugin/search": super::reward::medrl::plugin::search,
            },
        });
    }

    use reward::medrl::plugin::types as t;
    pub use t::SampleBatch;

    pub fn manifest(m: t::Manifest) -> super::Manifest {
        super::Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            config_schema: m.config_schema,
            capabilities: m
                .capabilities
                .into_iter()
                .map(|c| match c {
                    t::Capability::Judge => super::Capability::Judge,
                    t::Capability::Search => super::Capability::Search,
                })
                .collect(),
            api_version: m.api_version,
        }
    }

    /// 0.3.0 results as 0.2.0's (the same fields; moved, not copied).
    pub fn batch_scores(b: t::BatchScores) -> super::v02::BatchScores {
        super::v02::BatchScores {
            scores: b.scores,
            component_names: b.component_names,
            components: b.components,
            absent: b.absent,
            errors: b.errors,
            not_applicable: b.not_applicable,
        }
    }
}

pub use reward::medrl::plugin::types::{Capability, Manifest, Sample, ScoreResult, Scored};
