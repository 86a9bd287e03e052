//! GPTQ bit packing: values of `bits` bits laid end to end as a little-endian bit stream over u32 words
//! (value `t` at stream bits `[t·bits, (t+1)·bits)`). For 2/4/8 bits no value crosses a word; for 3 bits
//! 32 values fill 3 words and values 10 and 21 of each 32 straddle a word boundary.

/// Where value `t` of a stream sits: word index, bit offset, and whether it spills into the next word.
#[inline(always)]
pub fn locate(t: usize, bits: u32) -> (usize, u32, bool) {
    let bit = t * bits as usize;
    let (word, off) = (bit / 32, (bit % 32) as u32);
    (word, off, off + bits > 32)
}

/// Packs `values` (each `< 2^bits`, higher bits ignored) into `out` (`values.len()·bits/32` words).
pub fn pack_stream(values: &[u32], bits: u32, out: &mut [u32]) {
    let mask = (1u32 << bits) - 1;
    out.fill(0);
    for (t, &v) in values.iter().enumerate() {
        let v = v & mask;
        let (w, off, spill) = locate(t, bits);
        out[w] |= v << off;
        if spill {
            out[w + 1] |= v >> (32 - off);
        }
    }
}

/// Extracts value `t` of a stream whose word `i` is `word(i)`.
#[inline(always)]
pub fn extract(t: usize, bits: u32, word: impl Fn(usize) -> u32) -> u32 {
    let mask = (1u32 << bits) - 1;
    let (w, off, spill) = locate(t, bits);
    let mut v = word(w) >> off;
    if spill {
        v |= word(w + 1) << (32 - off);
    }
    v & mask
}

/// Unpacks `out.len()` values from `words`.
pub fn unpack_stream(words: &[u32], bits: u32, out: &mut [u32]) {
    for (t, o) in out.iter_mut().enumerate() {
        *o = extract(t, bits, |i| words[i]);
    }
}

/// `qweight [k·bits/32, n]` from codes `[n, k]` (each output column's codes form one stream along K).
pub fn pack_qweight(codes: &[u8], bits: u32, n: usize, k: usize) -> Vec<u32> {
    let words = k * bits as usize / 32;
    let mut out = vec![0u32; words * n];
    let mut vals = vec![0u32; k];
    let mut col = vec![0u32; words];
    for c in 0..n {
        vals.iter_mut().zip(&codes[c * k..(c + 1) * k]).for_each(|(v, &q)| *v = q as u32);
        pack_stream(&vals, bits, &mut col);
        for (w, &v) in col.iter().enumerate() {
            out[w * n + c] = v;
        }
    }
    out
}

/// Codes `[n, k]` from `qweight [k·bits/32, n]`.
pub fn unpack_qweight(qweight: &[u32], bits: u32, n: usize, k: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * k];
    for (c, row) in out.chunks_exact_mut(k).enumerate() {
        for (t, o) in row.iter_mut().enumerate() {
            *o = extract(t, bits, |w| qweight[w * n + c]) as u8;
        }
    }
    out
}

/// Packs each row of `values [rows, n]` along `n` (the qzeros layout, `[rows, n·bits/32]`).
pub fn pack_rows(values: &[u32], bits: u32, n: usize) -> Vec<u32> {
    let words = n * bits as usize / 32;
    let mut out = vec![0u32; values.len() / n * words];
    for (src, dst) in values.chunks_exact(n).zip(out.chunks_exact_mut(words)) {
        pack_stream(src, bits, dst);
    }
    out
}

/// Inverse of [`pack_rows`].
pub fn unpack_rows(words: &[u32], bits: u32, n: usize) -> Vec<u32> {
    let per_row = n * bits as usize / 32;
    let mut out = vec![0u32; words.len() / per_row * n];
    for (src, dst) in words.chunks_exact(per_row).zip(out.chunks_exact_mut(n)) {
        unpack_stream(src, bits, dst);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_bit_values_straddle_words_10_and_21() {
        assert_eq!(locate(10, 3), (0, 30, true));
        assert_eq!(locate(21, 3), (1, 31, true));
        assert_eq!(locate(31, 3), (2, 29, false));
    }

    #[test]
    fn symmetric_4bit_zero_minus_one_packs_to_0x77777777() {
        assert_eq!(pack_rows(&[7; 8], 4, 8), vec![0x7777_7777]);
        assert_eq!(pack_rows(&[127; 4], 8, 4), vec![0x7F7F_7F7F]);
    }
}
