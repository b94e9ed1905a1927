//! Host-side bindings generated from the WIT in `reward-sdk/wit/v0.1` (the source of truth).

pub mod reward {
    wasmtime::component::bindgen!({
        path: "../reward-sdk/wit/v0.1",
        world: "reward",
    });
}

pub mod adapter {
    wasmtime::component::bindgen!({
        path: "../reward-sdk/wit/v0.1",
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

pub use reward::medrl::plugin::types::{Capability, Manifest, Sample, ScoreResult, Scored};
