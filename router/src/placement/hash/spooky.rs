//! Bob Jenkins' SpookyHash V2 (public domain), the 32-bit result only: mcrouter's
//! `WeightedCh3` draws its per-key weight test from `SpookyHashV2::Hash32` (folly), so the
//! router needs the same bits to place keys as an mcrouter pool does. Little-endian reads,
//! as on the x86/ARM hosts mcrouter runs on.

const SC_CONST: u64 = 0xdead_beef_dead_beef;
/// Messages shorter than this take the short path (`sc_bufSize`, two 96-byte blocks).
const BUF_SIZE: usize = 192;
const BLOCK: usize = 96;

/// `SpookyHash::Hash32(message, length, seed)`.
pub fn hash32(msg: &[u8], seed: u32) -> u32 {
    hash128(msg, seed as u64, seed as u64).0 as u32
}

/// `SpookyHash::Hash128` with both halves seeded.
fn hash128(msg: &[u8], seed1: u64, seed2: u64) -> (u64, u64) {
    if msg.len() < BUF_SIZE {
        return short(msg, seed1, seed2);
    }
    let mut h = [
        seed1, seed2, SC_CONST, seed1, seed2, SC_CONST, seed1, seed2, SC_CONST, seed1, seed2,
        SC_CONST,
    ];
    let mut blocks = msg.chunks_exact(BLOCK);
    for block in &mut blocks {
        mix(&words::<12>(block), &mut h);
    }
    let rest = blocks.remainder();
    let mut last = [0u8; BLOCK];
    last[..rest.len()].copy_from_slice(rest);
    last[BLOCK - 1] = rest.len() as u8;
    end(&words::<12>(&last), &mut h);
    (h[0], h[1])
}

fn words<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut w = [0u64; N];
    for (i, c) in bytes.chunks_exact(8).take(N).enumerate() {
        w[i] = u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    w
}

fn le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(b)
}

/// One 96-byte block into the 12-word state (`SpookyHash::Mix`).
fn mix(data: &[u64; 12], s: &mut [u64; 12]) {
    const ROT: [u32; 12] = [11, 32, 43, 31, 17, 28, 39, 57, 55, 54, 22, 46];
    for i in 0..12 {
        s[i] = s[i].wrapping_add(data[i]);
        s[(i + 2) % 12] ^= s[(i + 10) % 12];
        s[(i + 11) % 12] ^= s[i];
        s[i] = s[i].rotate_left(ROT[i]);
        s[(i + 11) % 12] = s[(i + 11) % 12].wrapping_add(s[(i + 1) % 12]);
    }
}

/// `SpookyHash::EndPartial`.
fn end_partial(h: &mut [u64; 12]) {
    const ROT: [u32; 12] = [44, 15, 34, 21, 38, 33, 10, 13, 38, 53, 42, 54];
    for (i, r) in ROT.iter().enumerate() {
        // h[i+11] += h[i+1]; h[i+2] ^= h[i+11]; h[i+1] = rot(h[i+1], ROT[i])
        let a = (i + 11) % 12;
        let b = (i + 1) % 12;
        let c = (i + 2) % 12;
        h[a] = h[a].wrapping_add(h[b]);
        h[c] ^= h[a];
        h[b] = h[b].rotate_left(*r);
    }
}

/// `SpookyHash::End`: the last (padded) block, then three rounds of final mixing.
fn end(data: &[u64; 12], h: &mut [u64; 12]) {
    for i in 0..12 {
        h[i] = h[i].wrapping_add(data[i]);
    }
    end_partial(h);
    end_partial(h);
    end_partial(h);
}

fn short_mix(h: &mut [u64; 4]) {
    const ROT: [u32; 12] = [50, 52, 30, 41, 54, 48, 38, 37, 62, 34, 5, 36];
    for (round, r) in ROT.iter().enumerate() {
        // h2 = rot(h2); h2 += h3; h0 ^= h2; then the indices shift by one each step.
        let a = (round + 2) % 4;
        let b = (round + 3) % 4;
        let c = round % 4;
        h[a] = h[a].rotate_left(*r);
        h[a] = h[a].wrapping_add(h[b]);
        h[c] ^= h[a];
    }
}

fn short_end(h: &mut [u64; 4]) {
    const ROT: [u32; 11] = [15, 52, 26, 51, 28, 9, 47, 54, 32, 25, 63];
    for (round, r) in ROT.iter().enumerate() {
        // h3 ^= h2; h2 = rot(h2); h3 += h2; then the indices shift by one each step.
        let a = (round + 3) % 4;
        let b = (round + 2) % 4;
        h[a] ^= h[b];
        h[b] = h[b].rotate_left(*r);
        h[a] = h[a].wrapping_add(h[b]);
    }
}

/// `SpookyHash::Short`, for messages under 192 bytes.
fn short(msg: &[u8], seed1: u64, seed2: u64) -> (u64, u64) {
    let mut h = [seed1, seed2, SC_CONST, SC_CONST];
    let len = msg.len();
    let mut rest = msg;
    if len >= 16 {
        while rest.len() >= 32 {
            h[2] = h[2].wrapping_add(le(&rest[0..8]));
            h[3] = h[3].wrapping_add(le(&rest[8..16]));
            short_mix(&mut h);
            h[0] = h[0].wrapping_add(le(&rest[16..24]));
            h[1] = h[1].wrapping_add(le(&rest[24..32]));
            rest = &rest[32..];
        }
        if rest.len() >= 16 {
            h[2] = h[2].wrapping_add(le(&rest[0..8]));
            h[3] = h[3].wrapping_add(le(&rest[8..16]));
            short_mix(&mut h);
            rest = &rest[16..];
        }
    }
    h[3] = h[3].wrapping_add((len as u64) << 56);
    match rest.len() {
        0 => {
            h[2] = h[2].wrapping_add(SC_CONST);
            h[3] = h[3].wrapping_add(SC_CONST);
        }
        n if n >= 8 => {
            h[2] = h[2].wrapping_add(le(&rest[..8]));
            h[3] = h[3].wrapping_add(le(&rest[8..]));
        }
        _ => h[2] = h[2].wrapping_add(le(rest)),
    }
    short_end(&mut h);
    (h[0], h[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bob Jenkins' own check (SpookyV2 `TestResults`): `Hash32` of the bytes
    /// `128, 129, ...` of length `i`, seed 0.
    #[test]
    fn jenkins_test_vectors() {
        let buf: Vec<u8> = (0..512).map(|i| (i + 128) as u8).collect();
        let expected: &[(usize, u32)] = &[
            (0, 0x6bf50919),
            (1, 0x70de1d26),
            (2, 0xa2b37298),
            (3, 0x35bc5fbf),
            (4, 0x8223b279),
            (5, 0x5bcb315e),
            (6, 0x53fe88a1),
            (7, 0xf9f1a233),
            (8, 0xee193982),
            (9, 0x54f86f29),
            (10, 0xc8772d36),
            (11, 0x9ed60886),
            (12, 0x5f23d1da),
            (13, 0x1ed9f474),
            (14, 0xf2ef0c89),
            (15, 0x83ec01f9),
            (16, 0xf274736c),
            (17, 0x7e9ac0df),
            (64, 0x069c8bb7),
            (128, 0x94e948ec),
            (192, 0x77e012bd),
            (193, 0x2d05114c),
            (256, 0x38cebf03),
            (320, 0xf1545450),
            (384, 0x44eb5634),
            (448, 0xad7baa23),
            (511, 0xcc1c8250),
        ];
        for &(len, want) in expected {
            assert_eq!(hash32(&buf[..len], 0), want, "length {len}");
        }
    }
}
