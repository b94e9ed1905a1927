//! LoRA adapters (low-rank updates of a frozen projection), in PEFT's layout.
//!
//! For a projection `y = x W^T`, LoRA adds `scale * (x A^T) B^T` with `A: [r, in]`,
//! `B: [out, r]`, `scale = alpha / r`. `B` starts at zero so the adapted model starts equal to
//! the base model. Tensor names follow PEFT (`...q_proj.lora_A.weight`), so an adapter saved by
//! medrl loads in `peft` and vice versa.

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scale: f64,
    /// Training only: a `[rows, in]` dropout mask (0 or `1/(1-p)`) applied to the adapter's
    /// input, as PEFT's `lora_dropout`; rebuilt for every forward by the trainer.
    pub dropout_mask: Option<Tensor>,
}

impl LoraAdapter {
    /// PEFT's default init: `A` Kaiming-uniform (bound `1/sqrt(in)` for a = sqrt(5)), `B` zero.
    pub fn init(in_dim: usize, out_dim: usize, rank: usize, alpha: f64, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f32> = (0..rank * in_dim).map(|_| rng.gen_range(-bound..bound) as f32).collect();
        Ok(Self {
            a: Tensor::from_vec(a, (rank, in_dim), device)?,
            b: Tensor::zeros((out_dim, rank), DType::F32, device)?,
            scale: alpha / rank as f64,
            dropout_mask: None,
        })
    }

    pub fn rank(&self) -> usize {
        self.a.dim(0).unwrap_or(0)
    }

    /// The low-rank term `scale * (x A^T) B^T` for `x: [rows, in]`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.a.to_dtype(x.dtype())?;
        let b = self.b.to_dtype(x.dtype())?;
        let dropped;
        let x = match &self.dropout_mask {
            Some(m) => {
                dropped = x.mul(&m.to_dtype(x.dtype())?)?;
                &dropped
            }
            None => x,
        };
        // Scaling the [rows, r] factor costs r / out of scaling the result.
        (x.matmul(&a.t()?)? * self.scale)?.matmul(&b.t()?)
    }

    /// `scale * B A`, the dense update that merging adds to the base weight.
    pub fn merged_delta(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Linear;
    use medrl_nn::ops::gradcheck::check;
    use candle_core::Module;

    fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn starts_as_identity_update_and_merges_exactly() {
        let mut lora = LoraAdapter::init(6, 4, 2, 16.0, 1, &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 6), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 6), &Device::Cpu).unwrap();
        let base = Linear { weight: w.clone().into(), bias: None, lora: None };
        let adapted = Linear { weight: w.clone().into(), bias: None, lora: Some(lora.clone()) };
        let diff = (base.forward(&x).unwrap() - adapted.forward(&x).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "B = 0 must leave the output unchanged");
        lora.b = Tensor::randn(0f32, 1.0, (4, 2), &Device::Cpu).unwrap();
        let adapted = Linear { weight: w.clone().into(), bias: None, lora: Some(lora.clone()) };
        let merged = Linear { weight: (w + lora.merged_delta().unwrap()).unwrap().into(), bias: None, lora: None };
        let diff = (merged.forward(&x).unwrap() - adapted.forward(&x).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "merged weights differ from the adapter by {diff}");
    }

    #[test]
    fn gradient_reaches_a_and_b() {
        let x = t((0..12).map(|i| (i as f64 - 6.0) / 5.0).collect(), &[2, 6]);
        let w = t((0..24).map(|i| ((i * 7 % 13) as f64 - 6.0) / 9.0).collect(), &[4, 6]);
        let a = t((0..12).map(|i| ((i * 5 % 7) as f64 - 3.0) / 4.0).collect(), &[2, 6]);
        let b = t((0..8).map(|i| ((i * 3 % 5) as f64 - 2.0) / 3.0).collect(), &[4, 2]);
        let r = check(
            &[a, b, x],
            |p| {
                let lin = Linear { weight: w.clone().into(), bias: None, lora: Some(LoraAdapter { a: p[0].clone(), b: p[1].clone(), scale: 2.0, dropout_mask: None }) };
                lin.forward(&p[2])
            },
            24,
            1e-6,
        )
        .unwrap();
        assert!(r.max_rel_err < 1e-6, "{r:?}");
    }
}
