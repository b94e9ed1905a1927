//! Typed errors of the plugin host. Every variant names the plugin (name and version) so a
//! failure in a training log can be traced to the exact build that caused it.

use std::fmt;
use std::time::Duration;

/// Identity of a plugin as reported in errors and metrics.
///
/// Before the plugin's manifest could be read (invalid bytes, wrong API version), `name` is
/// the file name and `version` is `"?"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginId {
    pub name: String,
    pub version: String,
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Everything that can go wrong when loading or calling a plugin.
///
/// Any error raised by a failed call (`Trap`, `Timeout`, `OutOfFuel`, `MemoryLimit`, and
/// `BadOutput` when the output was too large to copy out) poisons the store that ran it: the
/// host drops that store and instantiates a fresh one for the next call. Per-sample errors
/// (`GuestError`, a NaN score) leave the store in use.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The guest trapped (`unreachable`, a Rust panic, stack overflow, out-of-bounds access...).
    #[error("plugin {plugin} trapped: {message}\nwasm backtrace:\n{backtrace}")]
    Trap {
        plugin: PluginId,
        message: String,
        backtrace: String,
    },

    /// The call ran past its wall-clock deadline (epoch interruption), or asked a blocking
    /// host call (a WASI sleep) to wait past it.
    #[error("plugin {plugin} timed out after {limit:?} (elapsed {elapsed:?})")]
    Timeout {
        plugin: PluginId,
        limit: Duration,
        elapsed: Duration,
    },

    /// The call used up its fuel budget (deterministic instruction budget).
    #[error("plugin {plugin} ran out of fuel (budget {fuel})")]
    OutOfFuel { plugin: PluginId, fuel: u64 },

    /// The guest tried to grow a linear memory past the configured cap.
    #[error("plugin {plugin} exceeded its memory limit of {limit_bytes} bytes (asked for {requested_bytes})")]
    MemoryLimit {
        plugin: PluginId,
        limit_bytes: usize,
        requested_bytes: usize,
    },

    /// The guest returned `err(...)` for a sample.
    #[error("plugin {plugin} returned an error: {message}")]
    GuestError { plugin: PluginId, message: String },

    /// The component was built against an API version this host does not support.
    #[error("plugin {plugin} targets medrl plugin API {found}, but this host supports {}; rebuild it against a supported reward-sdk/wit version", .supported.join(", "))]
    IncompatibleApi {
        plugin: PluginId,
        found: String,
        supported: Vec<String>,
    },

    /// The component exports another world than the one it was loaded as (a reward loaded as
    /// a tool, a tool as a reward, ...). Checked from its type, before it is instantiated.
    #[error("plugin {plugin} exports the `{found}` world, so it cannot be loaded as a `{expected}` plugin; use it where a {found} plugin is expected")]
    WrongWorld {
        plugin: PluginId,
        expected: &'static str,
        found: &'static str,
    },

    /// The guest's output broke the contract: wrong number of results, a non-finite score,
    /// output larger than the cap.
    #[error("plugin {plugin} produced bad output: {reason}")]
    BadOutput { plugin: PluginId, reason: String },

    /// The guest called a capability (judge, search) that the run did not grant.
    #[error("plugin {plugin} used capability `{capability}` which this run does not grant (grant it in the plugin's configuration)")]
    CapabilityDenied {
        plugin: PluginId,
        capability: String,
    },

    /// The component was refused before it ran because loading it would exceed a host limit:
    /// its size, a function's size, the number of functions, or the compile deadline.
    #[error("plugin {plugin} was refused at load: {reason}")]
    CompileLimit { plugin: PluginId, reason: String },

    /// The plugin's manifest breaks the host's rules (a field too long or with forbidden
    /// characters, too many capabilities). Checked before any field is used.
    #[error("plugin {plugin} has a bad manifest: {reason}")]
    BadManifest { plugin: PluginId, reason: String },

    /// The bytes are not a valid component, or not one exporting the expected world.
    #[error("plugin {plugin} is not a valid medrl plugin component: {reason}")]
    InvalidWasm { plugin: PluginId, reason: String },

    /// Reading the plugin or the compilation cache failed.
    #[error("plugin {plugin}: I/O error on {path}: {source}")]
    Io {
        plugin: PluginId,
        path: String,
        source: std::io::Error,
    },

    /// The host was asked for something inconsistent (e.g. fuel limit without fuel metering).
    #[error("plugin {plugin}: host configuration error: {reason}")]
    Config { plugin: PluginId, reason: String },
}

impl PluginError {
    /// Short stable name of the variant, used as the metrics key.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Trap { .. } => "trap",
            PluginError::Timeout { .. } => "timeout",
            PluginError::OutOfFuel { .. } => "out_of_fuel",
            PluginError::MemoryLimit { .. } => "memory_limit",
            PluginError::GuestError { .. } => "guest_error",
            PluginError::IncompatibleApi { .. } => "incompatible_api",
            PluginError::WrongWorld { .. } => "wrong_world",
            PluginError::BadOutput { .. } => "bad_output",
            PluginError::CapabilityDenied { .. } => "capability_denied",
            PluginError::CompileLimit { .. } => "compile_limit",
            PluginError::BadManifest { .. } => "bad_manifest",
            PluginError::InvalidWasm { .. } => "invalid_wasm",
            PluginError::Io { .. } => "io",
            PluginError::Config { .. } => "config",
        }
    }

    /// The plugin this error is about.
    pub fn plugin(&self) -> &PluginId {
        match self {
            PluginError::Trap { plugin, .. }
            | PluginError::Timeout { plugin, .. }
            | PluginError::OutOfFuel { plugin, .. }
            | PluginError::MemoryLimit { plugin, .. }
            | PluginError::GuestError { plugin, .. }
            | PluginError::IncompatibleApi { plugin, .. }
            | PluginError::WrongWorld { plugin, .. }
            | PluginError::BadOutput { plugin, .. }
            | PluginError::CapabilityDenied { plugin, .. }
            | PluginError::CompileLimit { plugin, .. }
            | PluginError::BadManifest { plugin, .. }
            | PluginError::InvalidWasm { plugin, .. }
            | PluginError::Io { plugin, .. }
            | PluginError::Config { plugin, .. } => plugin,
        }
    }

    /// Whether the error came out of a call that left the instance in an unknown state.
    pub fn poisons_store(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::Timeout { .. }
                | PluginError::OutOfFuel { .. }
                | PluginError::MemoryLimit { .. }
                | PluginError::CapabilityDenied { .. }
        )
    }
}

/// Bytes of guest-controlled text (error messages, backtraces) an error keeps: an error is
/// copied into the log line and output row of every sample it fails.
pub const MAX_ERROR_TEXT_BYTES: usize = 4 << 10;

/// `text` cut to `MAX_ERROR_TEXT_BYTES` (at a character boundary), saying how long it was.
pub(crate) fn clip(mut text: String) -> String {
    if text.len() <= MAX_ERROR_TEXT_BYTES {
        return text;
    }
    let total = text.len();
    let mut cut = MAX_ERROR_TEXT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!(" [... cut, {total} bytes in all]"));
    text
}

/// `PluginError` holds an `io::Error`, so it is not `Clone`; a failed chunk shares one error
/// among its samples and `score` hands back an owned copy.
pub(crate) fn clone_error(e: &PluginError) -> PluginError {
    use PluginError::*;
    match e {
        Trap {
            plugin,
            message,
            backtrace,
        } => Trap {
            plugin: plugin.clone(),
            message: message.clone(),
            backtrace: backtrace.clone(),
        },
        Timeout {
            plugin,
            limit,
            elapsed,
        } => Timeout {
            plugin: plugin.clone(),
            limit: *limit,
            elapsed: *elapsed,
        },
        OutOfFuel { plugin, fuel } => OutOfFuel {
            plugin: plugin.clone(),
            fuel: *fuel,
        },
        MemoryLimit {
            plugin,
            limit_bytes,
            requested_bytes,
        } => MemoryLimit {
            plugin: plugin.clone(),
            limit_bytes: *limit_bytes,
            requested_bytes: *requested_bytes,
        },
        GuestError { plugin, message } => GuestError {
            plugin: plugin.clone(),
            message: message.clone(),
        },
        IncompatibleApi {
            plugin,
            found,
            supported,
        } => IncompatibleApi {
            plugin: plugin.clone(),
            found: found.clone(),
            supported: supported.clone(),
        },
        WrongWorld {
            plugin,
            expected,
            found,
        } => WrongWorld {
            plugin: plugin.clone(),
            expected,
            found,
        },
        BadOutput { plugin, reason } => BadOutput {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        CapabilityDenied { plugin, capability } => CapabilityDenied {
            plugin: plugin.clone(),
            capability: capability.clone(),
        },
        InvalidWasm { plugin, reason } => InvalidWasm {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        CompileLimit { plugin, reason } => CompileLimit {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        BadManifest { plugin, reason } => BadManifest {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        Io {
            plugin,
            path,
            source,
        } => Io {
            plugin: plugin.clone(),
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Config { plugin, reason } => Config {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_error_text_is_clipped_at_a_char_boundary() {
        assert_eq!(clip("short".into()), "short");
        let long = "é".repeat(MAX_ERROR_TEXT_BYTES);
        let c = clip(long.clone());
        assert!(c.len() < MAX_ERROR_TEXT_BYTES + 64, "{}", c.len());
        assert!(c.ends_with(&format!("[... cut, {} bytes in all]", long.len())));
    }
}
