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

pub use reward::medrl::plugin::types::{Capability, Manifest, Sample, ScoreResult, Scored};
