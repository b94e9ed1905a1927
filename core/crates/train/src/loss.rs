//! Losses on token log-probabilities.

use candle_core::{DType, Result, Tensor};

/// Mean negative log-likelihood of `targets` over positions where `mask` is 1 (assistant tokens
/// in SFT): `sum(-log p(target) * mask) / sum(mask)`. `logits` `[B, T, V]`, `targets` `[B, T]`
/// u32, `mask` `[B, T]` of 0/1 in the logits' dtype. Returns 0 when nothing is masked in.
pub fn masked_token_nll(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let lp = medrl_lm::generate::token_logprobs(logits, targets)?;
    let mask = mask.to_dtype(lp.dtype())?;
    let total = (lp * &mask)?.sum_all()?.neg()?;
    let count = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    total / count.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use medrl_nn::ops::gradcheck::check;
    use candle_core::Device;

    #[test]
    fn matches_hand_computation_and_respects_mask() {
        let logits = Tensor::new(&[[[0.0f64, 1.0, 2.0], [1.0, 1.0, 1.0]]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[2u32, 0]], &Device::Cpu).unwrap();
        let lse0 = (1.0f64 + 1f64.exp() + 2f64.exp()).ln();
        let only_first = Tensor::new(&[[1.0f64, 0.0]], &Device::Cpu).unwrap();
        let l = masked_token_nll(&logits, &targets, &only_first).unwrap().to_scalar::<f64>().unwrap();
        assert!((l - (lse0 - 2.0)).abs() < 1e-12);
        let both = Tensor::new(&[[1.0f64, 1.0]], &Device::Cpu).unwrap();
        let l = masked_token_nll(&logits, &targets, &both).unwrap().to_scalar::<f64>().unwrap();
        assert!((l - ((lse0 - 2.0) + 3f64.ln()) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let v: Vec<f64> = (0..2 * 3 * 5).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
        let logits = Tensor::from_vec(v, (2, 3, 5), &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[1u32, 4, 0], [2, 2, 3]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[0.0f64, 1.0, 1.0], [1.0, 0.0, 1.0]], &Device::Cpu).unwrap();
        let r = check(&[logits], |t| masked_token_nll(&t[0], &targets, &mask), 30, 1e-6).unwrap();
        assert!(r.max_rel_err < 1e-6, "{r:?}");
    }
}
