//! The `medrl` command line; everything lives in [`medrl::cli`].

fn main() -> std::process::ExitCode {
    medrl::cli::main()
}
