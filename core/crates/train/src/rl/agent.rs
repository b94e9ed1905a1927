//! Multi-turn rollouts with tools: the loop is medrl-lm's ([`medrl_lm::agent`]), shared with
//! validation and `medrl eval`; the tools are medrl-reward's [`medrl_reward::ToolSet`].

pub use medrl_lm::agent::*;
