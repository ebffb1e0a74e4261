//! A targeted, allocation-free decoder of ROWS event images.
//!
//! It walks the row images of a WRITE/UPDATE/DELETE_ROWS event (v1, v2 and MySQL's
//! PARTIAL_UPDATE_ROWS) using the column types of the TABLE_MAP event, and hands out each
//! present, non-NULL column as a slice of the event buffer. Only the columns a rule needs
//! are formatted (see [`super::text`]); the rest are skipped by length. Tests compare it
//! with mysql_common's general decoder on the fixture files and live MariaDB binlogs.

/// Raw column type ids as they appear in TABLE_MAP events.
pub mod ty {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// Whether MySQL's signedness metadata has an entry for this type.
pub fn is_numeric(t: u8) -> bool {
    matches!(
        t,
        ty::TINY
            | ty::SHORT
            | ty::INT24
            | ty::LONG
            | ty::LONGLONG
            | ty::DECIMAL
            | ty::NEWDECIMAL
            | ty::FLOAT
            | ty::DOUBLE
            | ty::YEAR
    )
}

/// One column of a table map: its type, its metadata and whether it is unsigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColSpec {
    /// Type as written in the table map (for STRING, the real type is in `meta`).
    pub ty: u8,
    pub meta: [u8; 2],
    pub meta_len: u8,
    pub unsigned: bool,
}

/// A decoding error: the event does not match its table map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("row data ends early (needed {need} bytes at offset {at})")]
    Truncated { at: usize, need: usize },
    #[error("column type {0} is not supported in row images")]
    Unsupported(u8),
    #[error("bad metadata for column type {0}")]
    BadMeta(u8),
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

fn decimal_len(precision: u8, scale: u8) -> Result<usize, DecodeError> {
    if scale > precision {
        return Err(DecodeError::BadMeta(ty::NEWDECIMAL));
    }
    let intg = (precision - scale) as usize;
    let frac = scale as usize;
    Ok(intg / 9 * 4 + DIG2BYTES[intg % 9] + frac / 9 * 4 + DIG2BYTES[frac % 9])
}

fn le(data: &[u8], n: usize) -> u64 {
    let mut v = 0u64;
    for (i, b) in data[..n].iter().enumerate() {
        v |= (*b as u64) << (8 * i);
    }
    v
}

impl ColSpec {
    /// A column of type `ty` with the table map's metadata bytes `meta` (at most the
    /// first two are kept: no type needs more).
    pub fn new(ty: u8, meta: &[u8], unsigned: bool) -> ColSpec {
        let mut m = [0u8; 2];
        let ml = meta.len().min(2);
        m[..ml].copy_from_slice(&meta[..ml]);
        ColSpec {
            ty,
            meta: m,
            meta_len: ml as u8,
            unsigned,
        }
    }
    /// The effective type: STRING columns carry ENUM/SET/STRING in their metadata.
    pub fn real_type(&self) -> u8 {
        if self.ty == ty::STRING && self.meta_len == 2 {
            let t = self.meta[0];
            if t & 0x30 != 0x30 {
                // Long CHAR: two bits of the length live in the type byte.
                return ty::STRING;
            }
            return t;
        }
        self.ty
    }

    /// The fixed size, or for variable-size types, `(length-prefix size, 0)` encoded as Err.
    /// Returns the number of bytes the value at the start of `data` occupies, with the
    /// offset of its payload (after a length prefix).
    #[inline]
    pub fn value_len(&self, data: &[u8], at: usize) -> Result<(usize, usize), DecodeError> {
        let fixed = |n: usize| -> Result<(usize, usize), DecodeError> {
            if data.len() < n {
                Err(DecodeError::Truncated { at, need: n })
            } else {
                Ok((0, n))
            }
        };
        let prefixed = |p: usize| -> Result<(usize, usize), DecodeError> {
            if !(1..=4).contains(&p) {
                return Err(DecodeError::BadMeta(self.ty));
            }
            if data.len() < p {
                return Err(DecodeError::Truncated { at, need: p });
            }
            let n = le(data, p) as usize;
            if data.len() - p < n {
                return Err(DecodeError::Truncated { at, need: p + n });
            }
            Ok((p, n))
        };
        let m0 = self.meta[0] as usize;
        let m1 = self.meta[1] as usize;
        match self.ty {
            ty::TINY | ty::YEAR => fixed(1),
            ty::SHORT => fixed(2),
            ty::INT24 | ty::DATE | ty::NEWDATE | ty::TIME => fixed(3),
            ty::LONG | ty::TIMESTAMP => fixed(4),
            ty::LONGLONG | ty::DATETIME => fixed(8),
            ty::FLOAT => fixed(4),
            ty::DOUBLE => fixed(8),
            ty::NULL => fixed(0),
            ty::TIMESTAMP2 => fixed(4 + m0.div_ceil(2)),
            ty::DATETIME2 => fixed(5 + m0.div_ceil(2)),
            ty::TIME2 => fixed(3 + m0.div_ceil(2)),
            ty::NEWDECIMAL => fixed(decimal_len(self.meta[0], self.meta[1])?),
            ty::BIT => fixed((m1 * 8 + m0).div_ceil(8)),
            ty::VARCHAR | ty::VAR_STRING => {
                let max = m0 | (m1 << 8);
                prefixed(if max > 255 { 2 } else { 1 })
            }
            ty::TINY_BLOB
            | ty::MEDIUM_BLOB
            | ty::LONG_BLOB
            | ty::BLOB
            | ty::GEOMETRY
            | ty::VECTOR => prefixed(m0),
            ty::JSON => prefixed(if (1..=4).contains(&m0) { m0 } else { 4 }),
            ty::STRING => {
                if self.meta_len < 2 {
                    return Err(DecodeError::BadMeta(self.ty));
                }
                let t = self.meta[0] as usize;
                let (real, len) = if t & 0x30 != 0x30 {
                    (ty::STRING, m1 | (((t & 0x30) ^ 0x30) << 4))
                } else {
                    (t as u8, m1)
                };
                match real {
                    ty::ENUM | ty::SET => fixed(len),
                    _ => prefixed(if len > 255 { 2 } else { 1 }),
                }
            }
            ty::ENUM | ty::SET => fixed(m1.max(1)),
            other => Err(DecodeError::Unsupported(other)),
        }
    }
}

/// Reads one image starting at `*pos` in `data`, filling `slots` (one per column) with
/// `(start, end)` payload ranges. `present` is the columns-present bitmap.
pub fn read_image(
    data: &[u8],
    pos: &mut usize,
    cols: &[ColSpec],
    present: &[u8],
    partial_json: Option<usize>,
    slots: &mut Vec<Option<(usize, usize)>>,
) -> Result<(), DecodeError> {
    slots.clear();
    slots.resize(cols.len(), None);
    let mut p = *pos;
    if let Some(json_cols) = partial_json {
        // PARTIAL_UPDATE_ROWS after image: value_options, then the partial-JSON bitmap.
        let (opts, n) = lenenc(data, p)?;
        p += n;
        if opts & 1 != 0 {
            p += json_cols.div_ceil(8);
        }
    }
    let n_present = present
        .iter()
        .map(|b| b.count_ones() as usize)
        .sum::<usize>();
    let n_present = n_present.min(cols.len());
    let null_len = n_present.div_ceil(8);
    if data.len() < p + null_len {
        return Err(DecodeError::Truncated {
            at: p,
            need: null_len,
        });
    }
    let nulls = &data[p..p + null_len];
    p += null_len;
    let mut idx = 0usize;
    for (i, col) in cols.iter().enumerate() {
        if present.get(i / 8).is_none_or(|b| b & (1 << (i % 8)) == 0) {
            continue;
        }
        let is_null = nulls[idx / 8] & (1 << (idx % 8)) != 0;
        idx += 1;
        if is_null {
            continue;
        }
        let (prefix, len) = col.value_len(&data[p..], p)?;
        slots[i] = Some((p + prefix, p + prefix + len));
        p += prefix + len;
    }
    *pos = p;
    Ok(())
}

/// A length-encoded integer at `p`: its value and its size.
pub fn lenenc(data: &[u8], p: usize) -> Result<(u64, usize), DecodeError> {
    let first = *data
        .get(p)
        .ok_or(DecodeError::Truncated { at: p, need: 1 })?;
    let n = match first {
        0..=250 => return Ok((first as u64, 1)),
        252 => 2,
        253 => 3,
        254 => 8,
        _ => return Err(DecodeError::BadMeta(0)),
    };
    if data.len() < p + 1 + n {
        return Err(DecodeError::Truncated { at: p, need: 1 + n });
    }
    Ok((le(&data[p + 1..], n), 1 + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: u8, meta: &[u8], unsigned: bool) -> ColSpec {
        ColSpec::new(ty, meta, unsigned)
    }

    #[test]
    fn lengths_of_variable_columns() {
        let c = col(ty::VARCHAR, &[200, 0], false);
        assert_eq!(c.value_len(&[3, b'a', b'b', b'c'], 0), Ok((1, 3)));
        let c = col(ty::VARCHAR, &[0, 1], false);
        assert_eq!(c.value_len(&[3, 0, b'a', b'b', b'c'], 0), Ok((2, 3)));
        assert!(matches!(
            c.value_len(&[3, 0, b'a'], 0),
            Err(DecodeError::Truncated { .. })
        ));
        // CHAR(10) in utf8mb4: STRING with meta [0xfe, 40].
        let c = col(ty::STRING, &[0xfe, 40], false);
        assert_eq!(c.value_len(&[2, b'h', b'i'], 0), Ok((1, 2)));
        // ENUM: STRING with meta [ENUM, 1].
        let c = col(ty::STRING, &[ty::ENUM, 1], false);
        assert_eq!(c.value_len(&[2], 0), Ok((0, 1)));
        assert_eq!(decimal_len(10, 2), Ok(5));
        assert_eq!(decimal_len(65, 30), Ok(30));
    }
}
