
pub mod gguf;
