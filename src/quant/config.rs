//! Quantization options, validated once before any work starts.

use crate::error::{Error, Result};

/// Bit widths the GPTQ format and this library support.
pub const SUPPORTED_BITS: [u32; 4] = [2, 3, 4, 8];
/// Group sizes the library supports; `-1` means one group per output row.
pub const SUPPORTED_GROUP_SIZES: [i32; 8] = [-1, 16, 32, 64, 128, 256, 512, 1024];

/// Optional MSE-optimal clipping search over shrunk ranges (off by default, as in the reference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MseSearch {
    /// Exponent of the error norm (2.4 in the reference).
    pub norm: f32,
    /// Grid resolution: shrink factors are `1 - i/grid`.
    pub grid: u32,
    /// Largest shrink tried, as a fraction of the grid (0.8).
    pub max_shrink: f32,
}

impl Default for MseSearch {
    fn default() -> Self {
        MseSearch { norm: 2.4, grid: 100, max_shrink: 0.8 }
    }
}

/// Everything that decides how a layer is quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    pub bits: u32,
    /// `None` = one group per row (the format's `group_size = -1`).
    pub group_size: Option<usize>,
    pub sym: bool,
    /// Act-order: process columns by descending Hessian diagonal.
    pub desc_act: bool,
    /// Compute every group's scale/zero up front from the un-permuted weight.
    pub static_groups: bool,
    /// Group-aware reordering: act-order inside and across whole groups, so `g_idx` stays trivial.
    pub act_group_aware: bool,
    /// Damping as a fraction of the mean Hessian diagonal.
    pub damp_percent: f32,
    /// Step added to `damp_percent` after a failed Cholesky (0 = fail at once).
    pub damp_auto_increment: f32,
    /// Columns per lazy-batch block.
    pub block_size: usize,
    pub mse: Option<MseSearch>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            bits: 4,
            group_size: Some(128),
            sym: true,
            desc_act: false,
            static_groups: false,
            act_group_aware: false,
            damp_percent: 0.01,
            damp_auto_increment: 0.01,
            block_size: 128,
            mse: None,
        }
    }
}

impl QuantConfig {
    /// `maxq = 2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1 << self.bits) - 1
    }

    /// The group size as the checkpoint format writes it.
    pub fn group_size_i32(&self) -> i32 {
        self.group_size.map_or(-1, |g| g as i32)
    }

    /// Parses the format's signed group size.
    pub fn group_size_from_i32(g: i32) -> Result<Option<usize>> {
        if !SUPPORTED_GROUP_SIZES.contains(&g) {
            return Err(Error::Unsupported(format!(
                "group_size {g} (supported: {SUPPORTED_GROUP_SIZES:?})"
            )));
        }
        Ok(if g < 0 { None } else { Some(g as usize) })
    }

    /// Checks every field; called by every entry point that takes a config.
    pub fn validate(&self) -> Result<()> {
        check_bits(self.bits)?;
        Self::group_size_from_i32(self.group_size_i32())?;
        if !(self.damp_percent > 0.0 && self.damp_percent < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "damp_percent {} must be in (0, 1)",
                self.damp_percent
            )));
        }
        if !(self.damp_auto_increment >= 0.0 && self.damp_auto_increment < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "damp_auto_increment {} must be in [0, 1)",
                self.damp_auto_increment
            )));
        }
        if self.block_size == 0 || self.block_size > 4096 {
            return Err(Error::InvalidArgument(format!("block_size {} must be in 1..=4096", self.block_size)));
        }
        if self.desc_act && self.act_group_aware {
            return Err(Error::InvalidArgument(
                "desc_act and act_group_aware are alternatives; enable at most one".into(),
            ));
        }
        if self.group_size.is_none() && (self.static_groups || self.act_group_aware) {
            return Err(Error::InvalidArgument(
                "static_groups and act_group_aware need a group_size other than -1".into(),
            ));
        }
        if let Some(m) = self.mse {
            if !(m.norm > 0.0 && m.norm.is_finite()) || m.grid == 0 || m.grid > 10_000 {
                return Err(Error::InvalidArgument(format!(
                    "mse search: norm {} must be positive and grid {} in 1..=10000",
                    m.norm, m.grid
                )));
            }
            if !(m.max_shrink > 0.0 && m.max_shrink <= 1.0) {
                return Err(Error::InvalidArgument(format!("mse max_shrink {} must be in (0, 1]", m.max_shrink)));
            }
        }
        Ok(())
    }
}

/// Fails unless `bits` is one of [`SUPPORTED_BITS`].
pub fn check_bits(bits: u32) -> Result<()> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(Error::Unsupported(format!("bits {bits} (supported: {SUPPORTED_BITS:?})")))
    }
}

/// Number of groups along an input dimension of `k`.
pub fn num_groups(k: usize, group_size: Option<usize>) -> usize {
    group_size.map_or(1, |g| k.div_ceil(g))
}
