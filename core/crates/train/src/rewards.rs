//! Reward configuration for RL runs: which plugins, with what weight, config and failure
//! policy. It lives in medrl-reward ([`medrl_reward::RewardConfig`], [`medrl_reward::load_rewards`]),
//! beside the [`RewardSet`] that scores for training, validation and `medrl eval` alike, so
//! all three compute the same numbers; re-exported here under the names the trainers' configs
//! use (`RewardSpec` is the config-file entry).

pub use medrl_reward::{load_rewards, RewardConfig as RewardSpec, RewardError, RewardSet};
