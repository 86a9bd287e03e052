//! Parity with the reference GPTQ implementation (AutoGPTQ) on the oracle vectors in tests/data/vectors,
//! judged by the tolerance in that folder's README.

mod common;

use common::{test_loss, Case, CASES};
use gptq::format::pack::{pack_qweight, pack_rows, unpack_qweight, unpack_rows};
use gptq::format::{CheckpointFormat, LayerDesc, PackedRef};
use gptq::quant::{quantize_gptq, Hessian, Quantized, SampleCount};
use gptq::{Elements, MatView, QuantizedLayer};
use half::f16;

fn weight(case: &Case) -> (Vec<f16>, usize, usize) {
    let s = case.shape("W");
    (case.f16("W"), s[0], s[1])
}

fn hessian_from_x(case: &Case) -> Hessian {
    let s = case.shape("X_calib");
    let (b, seq, k) = (s[0], s[1], s[2]);
    let x = case.f16("X_calib");
    // The reference counts one sample per add_batch call (one sequence each).
    let mut h = Hessian::new(k, SampleCount::Batches).unwrap();
    for i in 0..b {
        let v = MatView::dense(Elements::F16(&x[i * seq * k..(i + 1) * seq * k]), seq, k, "X").unwrap();
        h.add_batch(&v).unwrap();
    }
    h
}

fn hessian_stored(case: &Case) -> Hessian {
    let k = case.shape("H")[0];
    let h = case.f32("H");
    Hessian::from_dense(Elements::F32(&h), k, case.cfg_usize("n_batches") as u64, SampleCount::Batches).unwrap()
}

/// Checks a result against the case by the README's tolerance rules 1–4.
fn check_parity(case: &Case, q: &Quantized, source: &str) {
    let (w16, n, k) = weight(case);
    let codes = case.i32("codes");
    let scale = case.f32("scale");
    let zero = case.i32("zero");
    let g_idx = case.i32("g_idx");
    let g = q.num_groups();
    let tag = format!("{} from {source}", case.name);

    // 1. Exact structure.
    assert_eq!(q.g_idx.iter().map(|&v| v as i32).collect::<Vec<_>>(), g_idx, "{tag}: g_idx");
    if case.has("perm") {
        let perm = q.perm.as_ref().expect("act-order result has a perm");
        assert_eq!(perm.iter().map(|&v| v as i32).collect::<Vec<_>>(), case.i32("perm"), "{tag}: perm");
    }
    if q.sym {
        assert!(q.zeros.iter().zip(&zero).all(|(a, b)| *a as i32 == *b), "{tag}: symmetric zeros");
    }

    // 2. Codes: ≤ 0.5% differ, in ≤ 5% of rows, |Δ| ≤ 3.
    let mut differing = 0usize;
    let mut bad_rows = vec![false; n];
    let mut max_delta = 0i32;
    for (i, (&a, &b)) in q.codes.iter().zip(&codes).enumerate() {
        let dlt = (a as i32 - b).abs();
        if dlt != 0 {
            differing += 1;
            bad_rows[i / k] = true;
            max_delta = max_delta.max(dlt);
        }
    }
    let rows_bad = bad_rows.iter().filter(|&&b| b).count();
    eprintln!("{tag}: {differing} codes differ in {rows_bad} rows (max |Δ| {max_delta})");
    assert!(differing as f64 <= 0.005 * (n * k) as f64, "{tag}: {differing} codes differ");
    assert!(rows_bad as f64 <= 0.05 * n as f64, "{tag}: {rows_bad} rows differ");
    assert!(max_delta <= 3, "{tag}: max |Δcode| {max_delta}");

    // 3. Rows without a differing code: scale within 1e-4, zero exact, Q within 1 fp16 ulp.
    let q_ref = case.f16("Q");
    let deq = q.dequantize();
    for r in (0..n).filter(|&r| !bad_rows[r]) {
        for gi in 0..g {
            let (a, b) = (q.scales[r * g + gi], scale[r * g + gi]);
            assert!(((a - b) / b).abs() <= 1e-4, "{tag}: scale[{r},{gi}] {a} vs {b}");
            assert_eq!(q.zeros[r * g + gi] as i32, zero[r * g + gi], "{tag}: zero[{r},{gi}]");
        }
        for c in 0..k {
            let ours = f16::from_f32(deq[r * k + c]);
            let theirs = q_ref[r * k + c];
            let ulps = (ours.to_bits() as i32 - theirs.to_bits() as i32).abs();
            assert!(ulps <= 1 || (ours.to_f32() == 0.0 && theirs.to_f32() == 0.0), "{tag}: Q[{r},{c}] {ours} vs {theirs}");
        }
    }

    // 4. Quality on held-out activations.
    let xs = case.f32("X_test");
    let rows = xs.len() / k;
    let w: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
    let ours = test_loss(&xs, rows, &w, &deq, n, k);
    let reference = case.meta["loss_test_gptq"].as_f64().unwrap();
    let rtn = case.meta["loss_test_rtn"].as_f64().unwrap();
    eprintln!("{tag}: loss {ours:.6e} (reference {reference:.6e}, RTN {rtn:.6e})");
    assert!(ours <= 1.01 * reference, "{tag}: loss {ours} > 1.01 × {reference}");
    assert!(ours < rtn, "{tag}: loss {ours} not below RTN {rtn}");
}

#[test]
fn gptq_matches_the_reference_from_stored_hessian() {
    for name in CASES {
        let case = Case::load(name);
        let (w, n, k) = weight(&case);
        let view = MatView::dense(Elements::F16(&w), n, k, "W").unwrap();
        let (q, report) = quantize_gptq(&view, &hessian_stored(&case), &case.config(), true).unwrap();
        assert!(report.loss_gptq < report.loss_rtn, "{name}: report says GPTQ is worse than RTN");
        check_parity(&case, &q, "H");
    }
}

#[test]
fn gptq_matches_the_reference_from_calibration_activations() {
    for name in CASES {
        let case = Case::load(name);
        let h = hessian_from_x(&case);
        // The accumulated Hessian itself agrees with the stored one to f32 rounding.
        let stored = case.f32("H");
        let (num, den) = h.matrix().iter().zip(&stored).fold((0f64, 0f64), |(a, b), (x, y)| {
            (a + (*x as f64 - *y as f64).powi(2), b + (*y as f64).powi(2))
        });
        assert!((num / den).sqrt() < 1e-5, "{name}: H differs by {}", (num / den).sqrt());
        let (w, n, k) = weight(&case);
        let view = MatView::dense(Elements::F16(&w), n, k, "W").unwrap();
        let (q, _) = quantize_gptq(&view, &h, &case.config(), true).unwrap();
        check_parity(&case, &q, "X_calib");
    }
}

#[test]
fn packing_the_reference_codes_reproduces_its_tensors_bit_for_bit() {
    for name in CASES {
        let case = Case::load(name);
        let (_, n, k) = weight(&case);
        let bits = case.cfg_usize("bits") as u32;
        let codes: Vec<u8> = case.i32("codes").iter().map(|&c| c as u8).collect();
        let qweight: Vec<u32> = case.i32("qweight").iter().map(|&v| v as u32).collect();
        assert_eq!(pack_qweight(&codes, bits, n, k), qweight, "{name}: qweight");
        assert_eq!(unpack_qweight(&qweight, bits, n, k), codes, "{name}: unpacked codes");

        // qzeros: [G, N] of zero − 1, compared outside the words the reference corrupts (c6).
        let zero = case.i32("zero");
        let g = zero.len() / n;
        let mask = (1u32 << bits) - 1;
        let zm1: Vec<u32> = (0..g * n).map(|i| ((zero[(i % n) * g + i / n] - 1) as u32) & mask).collect();
        let packed = pack_rows(&zm1, bits, n);
        let reference: Vec<u32> = case.i32("qzeros").iter().map(|&v| v as u32).collect();
        let bad: Vec<(usize, usize)> = if case.has("qzeros_bad_words") {
            case.i32("qzeros_bad_words").chunks(2).map(|p| (p[0] as usize, p[1] as usize)).collect()
        } else {
            Vec::new()
        };
        let words = n * bits as usize / 32;
        for (i, (a, b)) in packed.iter().zip(&reference).enumerate() {
            if !bad.contains(&(i / words, i % words)) {
                assert_eq!(a, b, "{name}: qzeros word {i}");
            }
        }
        assert_eq!(bad.len(), if name == "c6" { 10 } else { 0 });
        let unpacked = unpack_rows(&reference, bits, n);
        for (i, (&u, &z)) in unpacked.iter().zip(&zm1).enumerate() {
            if !bad.contains(&(i / n, (i % n) * bits as usize / 32)) {
                assert_eq!(u, z, "{name}: unpacked qzeros[{i}]");
            }
        }
    }
}

#[test]
fn importing_the_reference_tensors_dequantizes_to_its_q() {
    for name in CASES {
        let case = Case::load(name);
        let (_, n, k) = weight(&case);
        let cfg = case.config();
        let desc = LayerDesc { bits: cfg.bits, group_size: cfg.group_size, in_features: k, out_features: n, sym: cfg.sym };
        let qweight = case.i32("qweight");
        let scales = case.f16("scales");
        let g_idx = case.i32("packed_g_idx");
        // The reference qzeros of c6 carry the corrupted words; re-encode them correctly for v2 instead.
        let zero = case.i32("zero");
        let g = zero.len() / n;
        let zeros_v2: Vec<i32> = pack_rows(
            &(0..g * n).map(|i| zero[(i % n) * g + i / n] as u32).collect::<Vec<_>>(),
            cfg.bits,
            n,
        )
        .into_iter()
        .map(|v| v as i32)
        .collect();
        let (fmt, qzeros) = if name == "c6" {
            (CheckpointFormat::V2, zeros_v2)
        } else {
            (CheckpointFormat::V1, case.i32("qzeros"))
        };
        let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: Some(&g_idx), bias: None };
        let layer = QuantizedLayer::from_packed(desc, fmt, t).unwrap();
        let mut deq = vec![0f32; n * k];
        layer.dequantize_into(&mut deq);
        let q_ref = case.f16("Q");
        let codes = case.i32("codes");
        let g_idx_u: Vec<usize> = g_idx.iter().map(|&v| v as usize).collect();
        for r in 0..n {
            for c in 0..k {
                let gi = g_idx_u[c];
                let s = scales[gi * n + r].to_f32();
                let steps = (codes[r * k + c] - zero[r * g + gi]).abs() as f32;
                // fp16 scales vs the fp32 scale: about one fp16 ulp of the scale per step, plus Q's rounding.
                let tol = steps * s * 2f32.powi(-10) + q_ref[r * k + c].to_f32().abs() * 2f32.powi(-10) + 1e-7;
                let (a, b) = (deq[r * k + c], q_ref[r * k + c].to_f32());
                assert!((a - b).abs() <= tol, "{name}: deq[{r},{c}] {a} vs {b}");
            }
        }
        // Exporting in the format it came in reproduces the tensors.
        let back = layer.to_packed(fmt).unwrap();
        assert_eq!(back.qweight, qweight);
        assert_eq!(back.qzeros, qzeros);
        assert_eq!(back.scales, scales);
        assert_eq!(back.g_idx, g_idx);
        if name == "c6" {
            let err = layer.to_packed(CheckpointFormat::V1).unwrap_err();
            assert!(err.to_string().contains("v1 cannot store"), "{err}");
        }
    }
}
