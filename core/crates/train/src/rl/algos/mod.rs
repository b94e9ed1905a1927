//! The RL algorithms medrl runs, each one file on the [`RlAlgorithm`] trait, and the one place
//! that names them all ([`dispatch`]).

pub mod grpo;
pub mod ppo;
pub mod rloo;

use super::algorithm::RlAlgorithm;

/// Something to do with an algorithm chosen by name at run time (the CLI's `medrl grpo|ppo|
/// rloo` and `medrl schema`): generic over the algorithm, so it can load that algorithm's
/// config type and run it.
pub trait AlgorithmVisitor {
    type Output;
    fn visit<A: RlAlgorithm>(self) -> Self::Output;
}

/// Every algorithm's name, in the order `medrl --help` lists them.
pub const NAMES: &[&str] = &["grpo", "ppo", "rloo"];

/// Call `v` with the algorithm named `name` (`None`: no such algorithm).
///
/// Registering an algorithm is one line here (and its name in [`NAMES`]).
pub fn dispatch<V: AlgorithmVisitor>(name: &str, v: V) -> Option<V::Output> {
    Some(match name {
        "grpo" => v.visit::<grpo::Grpo>(),
        "ppo" => v.visit::<ppo::Ppo>(),
        "rloo" => v.visit::<rloo::Rloo>(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;
    impl AlgorithmVisitor for Name {
        type Output = &'static str;
        fn visit<A: RlAlgorithm>(self) -> &'static str {
            A::NAME
        }
    }

    #[test]
    fn every_listed_name_dispatches_to_the_algorithm_of_that_name() {
        for n in NAMES {
            assert_eq!(dispatch(n, Name), Some(*n));
        }
        assert_eq!(dispatch("reinforce", Name), None);
    }
}
