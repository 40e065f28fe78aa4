//! The Internet checksum (RFC 1071), the one definition meshd and its lab use: the data path's
//! GRO sums whole segments with it per packet, the path probes and the lab's pings fill their
//! IPv4 and ICMP headers with it.

/// The checksum field's value for `data` (a header or an ICMP message whose checksum field is
/// zero): the complement of its folded sum. Over data that includes a correct checksum it is 0.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The ones'-complement sum of `data` (starting at an even offset of its packet) as
/// big-endian 16-bit words, added to `acc`, unfolded.
///
/// The sum does not depend on byte order but for a final swap (RFC 1071), so it is taken over
/// the host's own 64-bit words, 32 bytes a round in four independent lanes (which the compiler
/// turns into vector adds), each word added as its two 32-bit halves so no carry is lost.
/// Where the CPU has AVX2 (found at run time), the same loop compiled for it.
#[inline]
pub fn sum(data: &[u8], acc: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return acc + u64::from(unsafe { sum_avx2(data) });
    }
    acc + u64::from(sum_words(data))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(data: &[u8]) -> u16 {
    sum_words(data)
}

/// [`sum`]'s loop: the folded big-endian sum of `data`.
#[inline(always)]
fn sum_words(data: &[u8]) -> u16 {
    let mut lanes = [0u64; 4];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (k, lane) in lanes.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8 * k..8 * k + 8]);
            let w = u64::from_ne_bytes(w);
            *lane += (w & 0xffff_ffff) + (w >> 32);
        }
    }
    let mut native: u64 = lanes.iter().map(|&l| u64::from(fold(l))).sum();
    let mut words = blocks.remainder().chunks_exact(2);
    for w in &mut words {
        native += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        // An odd last byte is the high byte of a big-endian word padded with zero.
        native += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    let host = fold(native);
    if cfg!(target_endian = "little") {
        host.swap_bytes()
    } else {
        host
    }
}

/// Fold a [`sum`] to 16 bits.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071, word by word: what the fast [`sum`] must agree with.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut s: u64 = data
            .chunks(2)
            .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn the_fast_sum_agrees_with_rfc_1071_at_every_length() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for len in (0..200).chain([1499, 1500, 2999, 3000]) {
            assert_eq!(
                fold(sum(&data[..len], 0)),
                reference_sum(&data[..len]),
                "len {len}"
            );
        }
        assert_eq!(fold(sum(&[0xff; 4096], 0)), 0xffff);
        assert_eq!(
            fold(sum(&[0x12, 0x34], 0x1_0000)),
            0x1235,
            "acc is added and folded"
        );
    }

    #[test]
    fn a_header_with_its_checksum_filled_in_sums_to_zero() {
        // An IPv4 header (RFC 1071's worked example style): fill the field, check again.
        let mut h = [
            0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0,
            0xc7,
        ];
        let c = checksum(&h);
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&h), 0);
        assert_eq!(checksum(&[]), 0xffff);
    }
}
