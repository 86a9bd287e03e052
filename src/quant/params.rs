//! Per-row scale and zero point of a group, and the quantize/dequantize rule, exactly as the reference
//! `Quantizer` computes them in f32 (round half to even everywhere).

use super::config::MseSearch;

/// Scale and zero point of one (row, group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub zero: f32,
}

/// Integer code of `w`: `clamp(round(w/scale) + zero, 0, maxq)`.
#[inline(always)]
pub fn quantize_code(w: f32, p: GroupParams, maxq: f32) -> f32 {
    ((w / p.scale).round_ties_even() + p.zero).clamp(0.0, maxq)
}

/// Dequantized value of a code.
#[inline(always)]
pub fn dequantize_code(q: f32, p: GroupParams) -> f32 {
    p.scale * (q - p.zero)
}

/// Scale/zero over the values `x` of one row of a group.
pub fn find_params(x: &[f32], maxq: u32, sym: bool, mse: Option<MseSearch>) -> GroupParams {
    let maxq_f = maxq as f32;
    let (mut xmin, mut xmax) = x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if sym {
        xmax = xmax.max(xmin.abs());
        // Reference quirk: a row with no negative value keeps xmin = 0.
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let scale = (xmax - xmin) / maxq_f;
    let sym_zero = (maxq_f + 1.0) / 2.0;
    let zero = if sym { sym_zero } else { (-xmin / scale).round_ties_even() };
    let mut best = GroupParams { scale, zero };
    if let Some(m) = mse {
        let mut best_err = f32::INFINITY;
        let steps = (m.max_shrink * m.grid as f32) as u32;
        for i in 0..steps {
            let p = (1.0 - i as f64 / m.grid as f64) as f32;
            let (lo, hi) = (p * xmin, p * xmax);
            let s = (hi - lo) / maxq_f;
            let cand = GroupParams { scale: s, zero: if sym { sym_zero } else { (-lo / s).round_ties_even() } };
            let err: f32 = x
                .iter()
                .map(|&v| (dequantize_code(quantize_code(v, cand, maxq_f), cand) - v).abs().powf(m.norm))
                .sum();
            if err < best_err {
                best_err = err;
                best = cand;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_row_without_negatives_keeps_zero_min() {
        // xmin stays 0, so scale = xmax / maxq and the zero is the midpoint: large values clamp.
        let p = find_params(&[0.0, 1.5, 3.0], 15, true, None);
        assert_eq!(p.scale, 3.0 / 15.0);
        assert_eq!(p.zero, 8.0);
        assert_eq!(quantize_code(3.0, p, 15.0), 15.0);
    }

    #[test]
    fn all_zero_row_gets_unit_range() {
        let p = find_params(&[0.0; 4], 3, false, None);
        assert_eq!(p.scale, 2.0 / 3.0);
        assert_eq!(p.zero, 2.0); // round(1.5) = 2 (ties to even)
    }

    #[test]
    fn rounding_is_half_to_even() {
        let p = GroupParams { scale: 1.0, zero: 0.0 };
        assert_eq!(quantize_code(2.5, p, 15.0), 2.0);
        assert_eq!(quantize_code(3.5, p, 15.0), 4.0);
    }

    #[test]
    fn mse_search_never_increases_the_error() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 30.0) / 10.0).chain([40.0]).collect();
        let err = |p: GroupParams| -> f32 {
            x.iter().map(|&v| (dequantize_code(quantize_code(v, p, 15.0), p) - v).abs().powf(2.4)).sum()
        };
        let plain = find_params(&x, 15, false, None);
        let searched = find_params(&x, 15, false, Some(MseSearch::default()));
        assert!(err(searched) <= err(plain));
        assert!(searched.scale < plain.scale, "the outlier should make clipping pay off");
    }
}
