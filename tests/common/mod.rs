//! Helpers shared by the integration tests: the oracle vectors and deterministic random data.
#![allow(dead_code)]

use gptq::quant::QuantConfig;
use half::f16;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// The oracle vectors: in the source tree, or relative to the working directory when a staged test
/// binary runs from a copy of the repository elsewhere (the GPU machine).
pub fn data_dir() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors");
    if built.is_dir() { built } else { PathBuf::from("tests/data/vectors") }
}

/// One oracle case: its tensors (as f32/i32) and its config.
pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
    pub meta: serde_json::Value,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let bytes = std::fs::read(data_dir().join(format!("{name}.safetensors"))).expect("vector file");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data_dir().join("vectors_summary.json")).unwrap()).unwrap();
        Case { name: name.into(), bytes, meta: summary[name].clone() }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    pub fn has(&self, t: &str) -> bool {
        self.st().tensor(t).is_ok()
    }
    pub fn shape(&self, t: &str) -> Vec<usize> {
        self.st().tensor(t).unwrap().shape().to_vec()
    }
    pub fn f16(&self, t: &str) -> Vec<f16> {
        let st = self.st();
        let v = st.tensor(t).unwrap();
        assert_eq!(v.dtype(), Dtype::F16, "{t}");
        v.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()
    }
    pub fn f32(&self, t: &str) -> Vec<f32> {
        let st = self.st();
        let v = st.tensor(t).unwrap();
        match v.dtype() {
            Dtype::F32 => v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::F16 => self.f16(t).iter().map(|x| x.to_f32()).collect(),
            d => panic!("{t}: dtype {d:?}"),
        }
    }
    pub fn i32(&self, t: &str) -> Vec<i32> {
        let st = self.st();
        let v = st.tensor(t).unwrap();
        match v.dtype() {
            Dtype::I32 => v.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::U8 => v.data().iter().map(|&b| b as i32).collect(),
            d => panic!("{t}: dtype {d:?}"),
        }
    }
    pub fn cfg_usize(&self, key: &str) -> usize {
        self.meta[key].as_u64().unwrap() as usize
    }
    pub fn config(&self) -> QuantConfig {
        let m = &self.meta;
        let gs = m["group_size"].as_i64().unwrap() as i32;
        QuantConfig {
            bits: m["bits"].as_u64().unwrap() as u32,
            group_size: QuantConfig::group_size_from_i32(gs).unwrap(),
            sym: m["sym"].as_bool().unwrap(),
            desc_act: m["desc_act"].as_bool().unwrap(),
            static_groups: m["static_groups"].as_bool().unwrap(),
            damp_percent: m["damp_percent"].as_f64().unwrap() as f32,
            block_size: m["blocksize"].as_u64().unwrap() as usize,
            ..QuantConfig::default()
        }
    }
}

pub const CASES: [&str; 5] = ["c1", "c2", "c3", "c5", "c6"];

/// `‖X (W − Q)ᵀ‖² / ‖X Wᵀ‖²` in f64, the vectors' loss.
pub fn test_loss(x: &[f32], rows: usize, w: &[f32], q: &[f32], n: usize, k: usize) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        for o in 0..n {
            let (wr, qr) = (&w[o * k..(o + 1) * k], &q[o * k..(o + 1) * k]);
            let (mut a, mut b) = (0f64, 0f64);
            for c in 0..k {
                a += xr[c] as f64 * (wr[c] as f64 - qr[c] as f64);
                b += xr[c] as f64 * wr[c] as f64;
            }
            num += a * a;
            den += b * b;
        }
    }
    num / den
}

/// A small deterministic generator (splitmix64) so tests need no rand crate.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// Correlated activations with outlier channels, the workload where GPTQ must beat RTN:
/// low-rank mixing plus noise, log-normal channel scales, a few channels amplified 10–50×.
pub fn correlated_activations(rng: &mut Rng, rows: usize, k: usize) -> Vec<f32> {
    let rank = 8.min(k);
    let mix = rng.normals(rank * k, 1.0);
    let chan_scale: Vec<f32> = (0..k).map(|_| (rng.normal() * 0.5).exp()).collect();
    let outliers: Vec<usize> = (0..4.min(k)).map(|_| rng.below(k as u64) as usize).collect();
    let mut x = vec![0f32; rows * k];
    for r in 0..rows {
        let z = rng.normals(rank, 1.0);
        for c in 0..k {
            let mut v = 0.3 * rng.normal();
            for t in 0..rank {
                v += z[t] * mix[t * k + c];
            }
            v *= chan_scale[c];
            if outliers.contains(&c) {
                v *= 20.0;
            }
            x[r * k + c] = v;
        }
    }
    x
}
