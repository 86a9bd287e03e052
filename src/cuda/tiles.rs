//! The tensor-core kernel's weight layout (kernels/gptq_mma.cu), built on the host from a layer's
//! permuted packing. Pure CPU code, so it is tested without a GPU.

use half::{bf16, f16};
use rayon::prelude::*;

/// Inputs per tile (mma k) and outputs per column tile.
pub(crate) const TILE_K: usize = 16;
pub(crate) const TILE_N: usize = 64;

/// A layer in the tile layout: weights shuffled into mma B fragments, scales and zero offsets in the
/// per-lane order the kernel loads, all padded to whole tiles.
pub(crate) struct MmaTiles {
    /// `[nt/4][kt][nt%4][v][lane][4]` words (`v < bits/4`; column tiles padded to a multiple of 4):
    /// tile `(nt, kt)` starts at word [`tile_index`]`·tile_words`.
    pub qweight: Vec<u32>,
    /// `[segment][nt][g][s]` scales as f16 and as bf16 bits.
    pub scale_f16: Vec<u16>,
    pub scale_bf16: Vec<u16>,
    /// Pair offsets `-(magic + zero)`: f16 with magic 1024; for bf16 activations at 4 bit, bf16 with
    /// magic 128 (8 bit in bf16 forms the difference in f16). `None` when every zero is `2^(bits-1)`
    /// (the kernel then uses a constant). These and the scales above serve the large-batch kernels,
    /// which scale each code pair before the mma.
    pub nzero_f16: Option<Vec<u16>>,
    pub nzero_bf16: Option<Vec<u16>>,
    /// The small-batch kernel's per-group data, in its accumulator order `[segment][nt][t][s][2]`
    /// (column `64·nt + 8s + 2t + h`): f16 scales, and f16 zeros (`None` when symmetric).
    pub acc_scale: Vec<u16>,
    pub acc_zero: Option<Vec<u16>>,
    pub tiles_per_group: usize,
    /// `log2(tiles_per_group)`, or 31 for one group (the kernel finds a tile's group by a shift).
    pub group_shift: u32,
}

/// Position of tile (`nt`, `kt`) among the tiles of a layer with `kt_count` tiles along K: four
/// neighbouring column tiles interleaved tile by tile, so the four warps of a block that stream them
/// read one contiguous stream (kernels/gptq_mma.cu, column_words).
pub(crate) fn tile_index(nt: usize, kt: usize, kt_count: usize) -> usize {
    ((nt / 4) * kt_count + kt) * 4 + nt % 4
}

/// The (k, n) offsets inside a tile of code `e` in word `c` of lane `lane` (the mapping written in
/// kernels/gptq_mma.cu's header: one mma B fragment register per code pair).
pub(crate) fn code_position(bits: u32, lane: usize, c: usize, e: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    let (s, r, hi) = if bits == 4 { (2 * c + (e & 1), (e & 3) >> 1, e >> 2) } else { (c, e & 1, e >> 1) };
    (2 * t + 8 * r + hi, 8 * s + g)
}

/// Builds the tile layout, or `None` when the layer's groups are not uniform runs of whole tiles in
/// permuted K order (those layers use the CUDA-core kernel). `qweight` is packed GPTQ-style in
/// permuted order `[k / (32/bits), n]`; `segments` are `(k_start, k_end, group)` runs in that order;
/// `scales`, `zeros` are `[groups, n]`.
pub(crate) fn mma_tiles(
    bits: u32,
    k: usize,
    n: usize,
    qweight: &[u32],
    segments: &[(usize, usize, u32)],
    scales: &[f32],
    zeros: &[f32],
) -> Option<MmaTiles> {
    if bits != 4 && bits != 8 || segments.is_empty() {
        return None;
    }
    let kt = k.div_ceil(TILE_K);
    let nt = n.div_ceil(TILE_N);
    let run = segments[0].1 - segments[0].0;
    let tiles_per_group = if segments.len() == 1 {
        kt
    } else {
        let uniform = segments[..segments.len() - 1].iter().all(|s| s.1 - s.0 == run);
        let last = segments[segments.len() - 1];
        if run % TILE_K != 0 || !uniform || last.1 - last.0 > run || !(run / TILE_K).is_power_of_two() {
            return None;
        }
        run / TILE_K
    };
    let group_shift = if segments.len() == 1 { 31 } else { tiles_per_group.trailing_zeros() };
    let pf = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    let qv = (bits / 4) as usize;
    let code = |kk: usize, nn: usize| -> u32 {
        if kk < k && nn < n { (qweight[(kk / pf) * n + nn] >> ((kk % pf) as u32 * bits)) & mask } else { 0 }
    };
    let tile_words = qv * 32 * 4;
    let mut qw = vec![0u32; nt.next_multiple_of(4) * kt * tile_words];
    // Tiles in storage order: index i is (quad i / (4·kt), kt (i / 4) % kt, column i % 4 of the quad).
    qw.par_chunks_mut(tile_words).enumerate().for_each(|(i, tile)| {
        let (ti, kti) = ((i / (4 * kt)) * 4 + i % 4, (i / 4) % kt);
        debug_assert_eq!(tile_index(ti, kti, kt), i);
        for (wi, word) in tile.iter_mut().enumerate() {
            let (v, rest) = (wi / 128, wi % 128);
            let (lane, c) = (rest / 4, 4 * v + rest % 4);
            let mut w = 0u32;
            for e in 0..pf {
                let (dk, dn) = code_position(bits, lane, c, e);
                w |= code(kti * TILE_K + dk, ti * TILE_N + dn) << (bits * e as u32);
            }
            *word = w;
        }
    });
    let half = 1u32 << (bits - 1);
    let sym = zeros.iter().all(|&z| z == half as f32);
    let len = segments.len() * nt * TILE_N;
    let (mut sh, mut sb) = (vec![0u16; len], vec![0u16; len]);
    let (mut zh, mut zb) = (vec![0u16; len], vec![0u16; len]);
    let (mut acc_scale, mut acc_zero) = (vec![0u16; len], vec![0u16; len]);
    let bf_magic = if bits == 4 { 128.0 } else { 1024.0 };
    for (si, &(_, _, grp)) in segments.iter().enumerate() {
        for col in 0..nt * TILE_N {
            let (ti, off) = (col / TILE_N, col % TILE_N);
            let (s, g) = (off / 8, off % 8);
            let at = ((si * nt + ti) * 8 + g) * 8 + s;
            let (scale, zero) =
                if col < n { (scales[grp as usize * n + col], zeros[grp as usize * n + col]) } else { (0.0, 0.0) };
            sh[at] = f16::from_f32(scale).to_bits();
            sb[at] = bf16::from_f32(scale).to_bits();
            zh[at] = f16::from_f32(-(1024.0 + zero)).to_bits();
            zb[at] = if bits == 4 { bf16::from_f32(-(bf_magic + zero)).to_bits() } else { zh[at] };
            let (t, h) = ((off % 8) / 2, off % 2);
            let acc_at = ((si * nt + ti) * 4 + t) * 16 + 2 * s + h;
            acc_scale[acc_at] = sh[at];
            acc_zero[acc_at] = f16::from_f32(zero).to_bits();
        }
    }
    Some(MmaTiles {
        qweight: qw,
        scale_f16: sh,
        scale_bf16: sb,
        nzero_f16: (!sym).then_some(zh),
        nzero_bf16: (!sym).then_some(zb),
        acc_scale,
        acc_zero: (!sym).then_some(acc_zero),
        tiles_per_group,
        group_shift,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bulk-copy kernel feeds a lane's B-fragment registers of subtiles 2j and 2j+1 to mma as the
    /// A operand of output columns 16j..16j+15 ({b[2j][0], b[2j+1][0], b[2j][1], b[2j+1][1]},
    /// kernels/gptq_mma.cu): with this layout every code of those registers sits where mma's
    /// m16n8k16 A fragment expects it (register q, half h: row g + 8·(q%2), column 2t + 8·(q/2) + h,
    /// rows being output columns and columns inputs), and the four registers cover the 16×16 block.
    #[test]
    fn b_registers_are_the_swapped_a_fragments() {
        for bits in [4u32, 8] {
            for j in 0..4 {
                let mut seen = std::collections::HashSet::new();
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    // Words per lane (bits/4 16-byte loads) and codes per word.
                    for c in 0..(if bits == 4 { 4 } else { 8 }) {
                        for e in 0..(32 / bits as usize) {
                            let (k, n) = code_position(bits, lane, c, e);
                            // The register (subtile s, register r) and half h the kernel unpacks this
                            // code into (int_tile).
                            let (s, r, h) =
                                if bits == 4 { (2 * c + (e & 1), (e & 3) >> 1, e >> 2) } else { (c, e & 1, e >> 1) };
                            if s / 2 != j {
                                continue;
                            }
                            let q = (s % 2) + 2 * r;
                            assert_eq!(n - 16 * j, g + 8 * (q % 2), "bits {bits} lane {lane} word {c} code {e}");
                            assert_eq!(k, 2 * t + 8 * (q / 2) + h, "bits {bits} lane {lane} word {c} code {e}");
                            assert!(seen.insert((k, n)));
                        }
                    }
                }
                assert_eq!(seen.len(), 256, "{bits} bit: columns {}..{}", 16 * j, 16 * j + 16);
            }
        }
    }

    /// Decodes the layout back with the documented mapping: every code lands where the kernel's
    /// fragment order says, padding is zero, scales and offsets sit at their lane's slot.
    #[test]
    fn tile_layout_round_trips_every_code() {
        for (bits, k, n) in [(4u32, 200usize, 72usize), (8, 36, 130), (4, 64, 64)] {
            let pf = (32 / bits) as usize;
            let maxq = (1u64 << bits) - 1;
            let mut state = 12345u64 + k as u64;
            let mut next = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                state >> 33
            };
            let codes: Vec<u32> = (0..k * n).map(|_| (next() % (maxq + 1)) as u32).collect(); // [k][n]
            let mut qweight = vec![0u32; k.div_ceil(pf) * n];
            for kk in 0..k {
                for nn in 0..n {
                    qweight[(kk / pf) * n + nn] |= codes[kk * n + nn] << ((kk % pf) as u32 * bits);
                }
            }
            let gs = 32;
            let segments: Vec<(usize, usize, u32)> =
                (0..k.div_ceil(gs)).map(|g| (g * gs, ((g + 1) * gs).min(k), g as u32)).collect();
            let groups = segments.len();
            let scales: Vec<f32> = (0..groups * n).map(|i| 0.001 * (i + 1) as f32).collect();
            let zeros: Vec<f32> = (0..groups * n).map(|i| (i % 7) as f32).collect();
            let t = mma_tiles(bits, k, n, &qweight, &segments, &scales, &zeros).expect("uniform groups");
            assert_eq!(t.tiles_per_group, gs / TILE_K);
            let (kt, nt) = (k.div_ceil(16), n.div_ceil(64));
            let mut seen = vec![false; k * n];
            for ti in 0..nt {
                for kti in 0..kt {
                    for wi in 0..(bits as usize / 4) * 128 {
                        let w = t.qweight[tile_index(ti, kti, kt) * (bits as usize / 4) * 128 + wi];
                        let (lane, c) = ((wi % 128) / 4, 4 * (wi / 128) + wi % 4);
                        for e in 0..pf {
                            let (dk, dn) = code_position(bits, lane, c, e);
                            let (kk, nn) = (kti * 16 + dk, ti * 64 + dn);
                            let got = (w >> (bits as usize * e)) & maxq as u32;
                            if kk < k && nn < n {
                                assert_eq!(got, codes[kk * n + nn], "bits {bits} k {kk} n {nn}");
                                assert!(!seen[kk * n + nn], "code placed twice");
                                seen[kk * n + nn] = true;
                            } else {
                                assert_eq!(got, 0, "padding");
                            }
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&s| s), "every code placed");
            let tile_words = (bits as usize / 4) * 128;
            assert_eq!(t.qweight.len(), nt.next_multiple_of(4) * kt * tile_words);
            for ti in nt..nt.next_multiple_of(4) {
                for kti in 0..kt {
                    let at = tile_index(ti, kti, kt) * tile_words;
                    assert!(t.qweight[at..at + tile_words].iter().all(|&w| w == 0), "padding column tile");
                }
            }
            let nz = t.nzero_f16.as_ref().expect("asymmetric");
            for (si, &(_, _, grp)) in segments.iter().enumerate() {
                for col in 0..n {
                    let at = ((si * nt + col / 64) * 8 + col % 8) * 8 + (col % 64) / 8;
                    assert_eq!(t.scale_f16[at], f16::from_f32(scales[grp as usize * n + col]).to_bits());
                    let z = zeros[grp as usize * n + col];
                    assert_eq!(f16::from_bits(nz[at]).to_f32(), -(1024.0 + z));
                    let (s, tq, h) = ((col % 64) / 8, (col % 8) / 2, col % 2);
                    let acc_at = ((si * nt + col / 64) * 4 + tq) * 16 + 2 * s + h;
                    assert_eq!(t.acc_scale[acc_at], t.scale_f16[at]);
                    assert_eq!(f16::from_bits(t.acc_zero.as_ref().unwrap()[acc_at]).to_f32(), z);
                }
            }
        }
    }

    /// The small-batch kernel's arithmetic (kernels/gptq_mma.cu, fold_group), emulated in f32 with
    /// exact products and one rounding per 16-input mma: raw sums Σ a·(1024 + mult·q) per group, minus
    /// (1024 + mult·z)·Σ a, times s / mult, stays within 2e-3 of the f64 result after fp16 rounding of
    /// the output (measured: 1.9e-4 to 2.5e-4, the output rounding itself), also for activations
    /// whose group sums dwarf the result (all positive, large mean, outliers), where the subtraction
    /// cancels most of the raw sum's bits.
    #[test]
    fn integer_codes_with_per_group_scales_keep_fp16_accuracy() {
        let (k, n, gs) = (2048usize, 64usize, 128usize);
        let mut state = 99u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let codes: Vec<f64> = (0..k * n).map(|_| (next() * 16.0).floor()).collect();
        let scales: Vec<f64> = (0..k / gs * n).map(|_| f16::from_f64(0.001 + 0.01 * next()).to_f64()).collect();
        let zeros: Vec<f64> = (0..k / gs * n).map(|_| (next() * 16.0).floor()).collect();
        let cases: Vec<(&str, Vec<f64>)> = vec![
            ("gaussian-like", (0..k).map(|_| next() * 2.0 - 1.0).collect()),
            ("all positive", (0..k).map(|_| next() * 3.0).collect()),
            ("mean 100", (0..k).map(|_| 100.0 + 200.0 * next()).collect()),
            ("constant 30", vec![30.0; k]),
            ("outliers", (0..k).map(|i| if i % 97 == 0 { 800.0 } else { next() - 0.5 }).collect()),
        ];
        for (name, a) in cases {
            let a: Vec<f64> = a.iter().map(|&v| f16::from_f64(v).to_f64()).collect();
            let (mut err2, mut ref2) = (0.0f64, 0.0f64);
            for col in 0..n {
                // Odd subtiles carry 16q (mult 16), even ones q: check both.
                let mult: f32 = if col % 16 >= 8 { 16.0 } else { 1.0 };
                let mut total = 0.0f32;
                let mut exact = 0.0f64;
                for g in 0..k / gs {
                    let (s, z) = (scales[g * n + col], zeros[g * n + col]);
                    let (mut acc, mut sum) = (0.0f32, 0.0f32);
                    for t in (g * gs..(g + 1) * gs).step_by(16) {
                        let raw: f64 = (t..t + 16).map(|kk| a[kk] * (1024.0 + mult as f64 * codes[kk * n + col])).sum();
                        acc = (acc as f64 + raw) as f32;
                        sum = (sum as f64 + a[t..t + 16].iter().sum::<f64>()) as f32;
                        exact += (t..t + 16).map(|kk| a[kk] * s * (codes[kk * n + col] - z)).sum::<f64>();
                    }
                    let off = -(1024.0 + mult * z as f32);
                    let scl = s as f32 / mult;
                    total = sum.mul_add(off, acc).mul_add(scl, total);
                }
                let out = f16::from_f32(total).to_f64();
                err2 += (out - exact).powi(2);
                ref2 += exact * exact;
            }
            let rel = (err2 / ref2).sqrt();
            assert!(rel < 2e-3, "{name}: relative error {rel:e}");
        }
    }

    #[test]
    fn non_uniform_groups_are_left_to_the_cuda_core_kernel() {
        let qweight = vec![0u32; 64 / 8 * 64];
        let (s, z) = (vec![1.0f32; 2 * 64], vec![8.0f32; 2 * 64]);
        // A run of 24 inputs is not a whole number of 16-input tiles.
        assert!(mma_tiles(4, 64, 64, &qweight, &[(0, 24, 0), (24, 64, 1)], &s, &z).is_none());
        let t = mma_tiles(4, 64, 64, &qweight, &[(0, 32, 0), (32, 64, 1)], &s, &z).unwrap();
        assert!(t.nzero_f16.is_none(), "symmetric zeros need no offset array");
    }
}
