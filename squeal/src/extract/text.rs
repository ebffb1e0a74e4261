//! The key text of a column value: byte for byte what a text-protocol `SELECT` of the row
//! hands the application (what pymysql, mysql2, JDBC or Go's driver return as a string, on
//! a utf8mb4 connection), so a key squeal builds from a row is the key the application
//! built from the same row. The README's "Key text of column values" lists every type.
//!
//! Each column of a table map gets a [`TextForm`] once (from the table map's FULL row
//! metadata, else information_schema), so formatting a value is one match and a few
//! byte operations. A column whose values cannot become key text (GEOMETRY, a character set
//! squeal cannot transcode) gets [`TextForm::Unsupported`]: every value it would have put
//! into a key is a counted, logged drop, never a silent one.

use std::fmt::Write as _;
use std::sync::Arc;

use mysql_common::binlog::decimal::Decimal;
use mysql_common::binlog::jsonb;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;

use crate::config::template::Filter;
use crate::source::decode::{ty, ColSpec};
use crate::source::zone::Zone;

/// Character sets squeal transcodes to UTF-8 (what a utf8mb4 connection receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb3, utf8mb4, ascii: the bytes are already UTF-8.
    Utf8,
    /// MySQL's latin1 (Windows-1252, with the five bytes it leaves undefined mapped to the
    /// C1 controls of the same value, as the server converts them).
    Latin1,
    /// `binary`: raw bytes, never converted.
    Binary,
}

impl Charset {
    /// The character set of a collation id (`SHOW COLLATION`), for the sets squeal knows.
    pub fn from_collation(id: u16) -> Option<Charset> {
        Some(match id {
            63 => Charset::Binary,
            5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 | 1032 | 1071 => Charset::Latin1,
            // ascii, utf8mb3, utf8mb4 (MySQL 8 and MariaDB ids, including NOPAD and UCA
            // variants).
            11 | 65 | 1035 | 1089 => Charset::Utf8,
            33 | 76 | 83 | 192..=215 | 223 | 576..=599 | 608..=610 | 1057 | 1107 => Charset::Utf8,
            45 | 46 | 224..=247 | 255..=323 | 1069 | 1070 | 1094 => Charset::Utf8,
            2048..=4095 => Charset::Utf8, // MariaDB 11 uca1400 utf8mb3/utf8mb4 collations
            _ => return None,
        })
    }

    /// The character set of a name (`information_schema.COLUMNS.CHARACTER_SET_NAME`).
    pub fn from_name(name: &str) -> Option<Charset> {
        Some(match name.to_ascii_lowercase().as_str() {
            "utf8" | "utf8mb3" | "utf8mb4" | "ascii" => Charset::Utf8,
            "latin1" => Charset::Latin1,
            "binary" => Charset::Binary,
            _ => return None,
        })
    }

    /// Appends `v` (in this character set) to `out` as UTF-8.
    pub fn transcode(self, v: &[u8], out: &mut Vec<u8>) {
        match self {
            Charset::Utf8 | Charset::Binary => out.extend_from_slice(v),
            // ASCII is the same in both: the common case costs one scan and one copy.
            Charset::Latin1 if v.is_ascii() => out.extend_from_slice(v),
            Charset::Latin1 => {
                for &b in v {
                    if b < 0x80 {
                        out.push(b);
                        continue;
                    }
                    let c = if (0x80..0xa0).contains(&b) {
                        CP1252_80[(b - 0x80) as usize]
                    } else {
                        b as char
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}

/// 0x80..=0x9F of MySQL's latin1 (cp1252; 0x81, 0x8D, 0x8F, 0x90, 0x9D map to U+0081...).
const CP1252_80: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

/// How one column's values become key text.
#[derive(Debug, Clone)]
pub enum TextForm {
    /// TINYINT..BIGINT: decimal; `zerofill` pads to the display width.
    Int {
        bytes: u8,
        unsigned: bool,
        zerofill: u8,
    },
    /// FLOAT (`dec`: FLOAT(M,D) prints D decimals).
    Float {
        dec: Option<u8>,
    },
    /// DOUBLE / REAL.
    Double {
        dec: Option<u8>,
    },
    /// DECIMAL(p,s): all s decimals.
    Decimal {
        precision: u8,
        scale: u8,
    },
    Year,
    Date,
    /// DATETIME(fsp), the MySQL 5.6+ format.
    DateTime2 {
        fsp: u8,
    },
    /// The pre-5.6 DATETIME (an integer YYYYMMDDhhmmss).
    DateTimeOld,
    /// TIMESTAMP(fsp), seconds since the epoch, shown in `zone`.
    Timestamp {
        fsp: u8,
        old: bool,
        zone: Arc<Zone>,
    },
    /// TIME(fsp), the MySQL 5.6+ format.
    Time2 {
        fsp: u8,
    },
    /// The pre-5.6 TIME (an integer [-]HHMMSS).
    TimeOld,
    /// CHAR/VARCHAR/TEXT (and MariaDB's JSON, a LONGTEXT): transcoded to UTF-8. Binary
    /// strings and BLOBs are [`Charset::Binary`].
    Text(Charset),
    /// BINARY(n): the bytes padded with 0x00 to n (the row image drops trailing zeros).
    BinaryChar(u16),
    /// BIT(n): the raw big-endian bytes, as the server sends them.
    Bit,
    /// ENUM: the label of the index (index 0, the error value, is the empty string).
    Enum(Arc<Vec<Vec<u8>>>),
    /// SET: the labels of the set bits, comma-separated, in definition order.
    Set(Arc<Vec<Vec<u8>>>),
    /// MySQL 8 binary JSON, printed as the server prints it.
    Json,
    /// MariaDB UUID: 8-4-4-4-12 lower-case hex.
    Uuid,
    /// MariaDB INET6, as MariaDB prints it.
    Inet6,
    /// MariaDB INET4: dotted quad.
    Inet4,
    /// No key text: why (for the log) and the drop reason label.
    Unsupported {
        reason: &'static str,
        why: String,
    },
}

/// Why a value made no key text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoText {
    /// Metric label (`squeal_keys_dropped_total{reason}`).
    pub reason: &'static str,
    pub why: String,
}

impl TextForm {
    /// The form of a column from its binlog type and what is known about it.
    pub fn of(col: &ColSpec, info: &ColumnMeta, zone: &Arc<Zone>) -> TextForm {
        let real = col.real_type();
        let dt = info.data_type.as_deref().unwrap_or("");
        let unsupported = |reason: &'static str, why: String| TextForm::Unsupported { reason, why };
        match real {
            ty::TINY | ty::SHORT | ty::INT24 | ty::LONG | ty::LONGLONG => TextForm::Int {
                bytes: match real {
                    ty::TINY => 1,
                    ty::SHORT => 2,
                    ty::INT24 => 3,
                    ty::LONG => 4,
                    _ => 8,
                },
                unsigned: col.unsigned,
                zerofill: info.zerofill,
            },
            ty::FLOAT => TextForm::Float { dec: info.decimals },
            ty::DOUBLE => TextForm::Double { dec: info.decimals },
            ty::NEWDECIMAL => TextForm::Decimal {
                precision: col.meta[0],
                scale: col.meta[1],
            },
            ty::YEAR => TextForm::Year,
            ty::DATE | ty::NEWDATE => TextForm::Date,
            ty::DATETIME2 => TextForm::DateTime2 { fsp: col.meta[0] },
            ty::DATETIME => TextForm::DateTimeOld,
            ty::TIMESTAMP2 => TextForm::Timestamp {
                fsp: col.meta[0],
                old: false,
                zone: zone.clone(),
            },
            ty::TIMESTAMP => TextForm::Timestamp {
                fsp: 0,
                old: true,
                zone: zone.clone(),
            },
            ty::TIME2 => TextForm::Time2 { fsp: col.meta[0] },
            ty::TIME => TextForm::TimeOld,
            ty::BIT => TextForm::Bit,
            ty::ENUM | ty::SET => match &info.labels {
                Some(l) if real == ty::ENUM => TextForm::Enum(l.clone()),
                Some(l) => TextForm::Set(l.clone()),
                None => unsupported(
                    "no_metadata",
                    "its ENUM/SET labels are unknown (no FULL row metadata, not in \
                     information_schema); set binlog_row_metadata=FULL"
                        .into(),
                ),
            },
            ty::JSON => TextForm::Json,
            ty::STRING if dt == "uuid" => TextForm::Uuid,
            ty::STRING if dt == "inet6" => TextForm::Inet6,
            ty::STRING if dt == "inet4" => TextForm::Inet4,
            ty::STRING | ty::VARCHAR | ty::VAR_STRING | ty::BLOB => match info.charset {
                CharsetInfo::Known(Charset::Binary) if real == ty::STRING => {
                    TextForm::BinaryChar(char_len(col))
                }
                CharsetInfo::Known(c) => TextForm::Text(c),
                CharsetInfo::Unknown(ref name) => unsupported(
                    "charset",
                    format!(
                        "its character set {name} is not one squeal transcodes (utf8mb4, \
                         utf8mb3, ascii, latin1, binary); use a {{col|hex}} template or \
                         convert the column"
                    ),
                ),
            },
            ty::GEOMETRY => unsupported(
                "unsupported_type",
                "GEOMETRY values have no key text; key on another column".into(),
            ),
            ty::VECTOR => unsupported(
                "unsupported_type",
                "VECTOR values have no key text; key on another column".into(),
            ),
            t => unsupported(
                "unsupported_type",
                format!("column type {t} has no key text"),
            ),
        }
    }

    /// Whether the form can make key text at all.
    pub fn problem(&self) -> Option<&str> {
        match self {
            TextForm::Unsupported { why, .. } => Some(why),
            _ => None,
        }
    }
}

/// Declared length in bytes of a CHAR/BINARY column (two of its bits live in the type byte).
fn char_len(col: &ColSpec) -> u16 {
    let t = col.meta[0] as u16;
    col.meta[1] as u16 | (((t & 0x30) ^ 0x30) << 4)
}

/// A fixed-size binary value padded back to its size (row images drop trailing 0x00).
fn padded<const N: usize>(v: &[u8]) -> Result<[u8; N], NoText> {
    if v.len() > N {
        return Err(NoText {
            reason: "decode",
            why: format!("value of {} bytes, expected at most {N}", v.len()),
        });
    }
    let mut b = [0u8; N];
    b[..v.len()].copy_from_slice(v);
    Ok(b)
}

/// What a column's metadata says beyond its binlog type.
#[derive(Debug, Clone, Default)]
pub struct ColumnMeta {
    /// information_schema DATA_TYPE (`uuid`, `inet6`...), lower case, when known.
    pub data_type: Option<String>,
    pub charset: CharsetInfo,
    pub labels: Option<Arc<Vec<Vec<u8>>>>,
    pub zerofill: u8,
    /// FLOAT(M,D)/DOUBLE(M,D): D.
    pub decimals: Option<u8>,
}

/// A string column's character set as far as it is known.
#[derive(Debug, Clone)]
pub enum CharsetInfo {
    Known(Charset),
    /// A set squeal does not transcode (its name or collation id, for the message).
    Unknown(String),
}

impl Default for CharsetInfo {
    /// Without FULL metadata or information_schema the bytes are passed as they are (the
    /// form tests and offline file reading use).
    fn default() -> Self {
        CharsetInfo::Known(Charset::Utf8)
    }
}

fn le(v: &[u8]) -> u64 {
    let mut x = 0u64;
    for (i, b) in v.iter().take(8).enumerate() {
        x |= (*b as u64) << (8 * i);
    }
    x
}

fn be(v: &[u8]) -> u64 {
    v.iter().take(8).fold(0u64, |a, b| (a << 8) | *b as u64)
}

fn short(need: usize, v: &[u8]) -> Result<(), NoText> {
    if v.len() < need {
        Err(NoText {
            reason: "decode",
            why: format!("value of {} bytes, expected {need}", v.len()),
        })
    } else {
        Ok(())
    }
}

/// Appends the key text of value `v` (the column's payload in the row image) to `out`.
pub fn format(form: &TextForm, v: &[u8], out: &mut Vec<u8>) -> Result<(), NoText> {
    match form {
        TextForm::Int {
            bytes,
            unsigned,
            zerofill,
        } => {
            let n = *bytes as usize;
            short(n, v)?;
            let raw = le(&v[..n]);
            let mut buf = [0u8; 20];
            let start = out.len();
            if *unsigned {
                out.extend_from_slice(fmt_u64(raw, &mut buf));
            } else {
                let shift = 64 - 8 * n as u32;
                let x = ((raw << shift) as i64) >> shift;
                if x < 0 {
                    out.push(b'-');
                }
                out.extend_from_slice(fmt_u64(x.unsigned_abs(), &mut buf));
            }
            let len = out.len() - start;
            if (*zerofill as usize) > len {
                let pad = *zerofill as usize - len;
                out.splice(start..start, std::iter::repeat_n(b'0', pad));
            }
        }
        TextForm::Text(c) => c.transcode(v, out),
        TextForm::BinaryChar(n) => {
            out.extend_from_slice(v);
            let n = *n as usize;
            if v.len() < n {
                out.extend(std::iter::repeat_n(0u8, n - v.len()));
            }
        }
        TextForm::Bit => out.extend_from_slice(v),
        TextForm::Float { dec } => {
            short(4, v)?;
            let f = f32::from_le_bytes(v[..4].try_into().expect("4")) as f64;
            match dec {
                Some(d) => fixed(f, *d, out),
                None => gcvt(f, true, out),
            }
        }
        TextForm::Double { dec } => {
            short(8, v)?;
            let f = f64::from_le_bytes(v[..8].try_into().expect("8"));
            match dec {
                Some(d) => fixed(f, *d, out),
                None => gcvt(f, false, out),
            }
        }
        TextForm::Decimal { precision, scale } => {
            let d =
                Decimal::read_bin(v, *precision as usize, *scale as usize, false).map_err(|e| {
                    NoText {
                        reason: "decode",
                        why: format!("DECIMAL({precision},{scale}): {e}"),
                    }
                })?;
            let mut s = String::new();
            let _ = write!(s, "{d}");
            out.extend_from_slice(s.as_bytes());
        }
        TextForm::Year => {
            short(1, v)?;
            if v[0] == 0 {
                out.extend_from_slice(b"0000");
            } else {
                push_num(out, 1900 + v[0] as u64, 4);
            }
        }
        TextForm::Date => {
            short(3, v)?;
            let x = le(&v[..3]);
            date(out, x >> 9, (x >> 5) & 15, x & 31);
        }
        TextForm::DateTime2 { fsp } => {
            short(5, v)?;
            let packed = be(&v[..5]) as i64 - 0x80_0000_0000;
            let ymd = packed >> 17;
            let ym = ymd >> 5;
            let hms = packed & ((1 << 17) - 1);
            date(out, (ym / 13) as u64, (ym % 13) as u64, (ymd & 31) as u64);
            out.push(b' ');
            clock(
                out,
                (hms >> 12) as u64,
                ((hms >> 6) & 63) as u64,
                (hms & 63) as u64,
            );
            let us = frac_unsigned(&v[5..], *fsp)?;
            frac(out, us, *fsp);
        }
        TextForm::DateTimeOld => {
            short(8, v)?;
            let x = le(&v[..8]);
            let (d, t) = (x / 1_000_000, x % 1_000_000);
            date(out, d / 10000, d / 100 % 100, d % 100);
            out.push(b' ');
            clock(out, t / 10000, t / 100 % 100, t % 100);
        }
        TextForm::Timestamp { fsp, old, zone } => {
            short(4, v)?;
            let secs = if *old { le(&v[..4]) } else { be(&v[..4]) } as i64;
            let us = if *old {
                0
            } else {
                frac_unsigned(&v[4..], *fsp)?
            };
            if secs == 0 && us == 0 {
                // The zero TIMESTAMP is shown as the zero date in every zone.
                date(out, 0, 0, 0);
                out.push(b' ');
                clock(out, 0, 0, 0);
            } else {
                let local = secs + zone.offset_at(secs) as i64;
                let (y, m, d) = civil(local.div_euclid(86400));
                let s = local.rem_euclid(86400) as u64;
                date(out, y as u64, m, d);
                out.push(b' ');
                clock(out, s / 3600, s / 60 % 60, s % 60);
            }
            frac(out, us, *fsp);
        }
        TextForm::Time2 { fsp } => {
            short(3, v)?;
            let int = be(&v[..3]) as i64 - 0x80_0000;
            let fb = (*fsp as usize).div_ceil(2);
            short(3 + fb, v)?;
            let packed: i64 = match fsp {
                1 | 2 => {
                    let (mut i, mut f) = (int, v[3] as i64);
                    if i < 0 && f != 0 {
                        i += 1;
                        f -= 0x100;
                    }
                    (i << 24) + f * 10000
                }
                3 | 4 => {
                    let (mut i, mut f) = (int, be(&v[3..5]) as i64);
                    if i < 0 && f != 0 {
                        i += 1;
                        f -= 0x10000;
                    }
                    (i << 24) + f * 100
                }
                5 | 6 => be(&v[..6]) as i64 - 0x8000_0000_0000,
                _ => int << 24,
            };
            let neg = packed < 0;
            let p = packed.unsigned_abs();
            let hms = p >> 24;
            let us = p & 0xff_ffff;
            if neg {
                out.push(b'-');
            }
            clock(out, (hms >> 12) & 1023, (hms >> 6) & 63, hms & 63);
            frac(out, us as u32, *fsp);
        }
        TextForm::TimeOld => {
            short(3, v)?;
            let raw = le(&v[..3]);
            let x = ((raw << 40) as i64) >> 40;
            if x < 0 {
                out.push(b'-');
            }
            let x = x.unsigned_abs();
            clock(out, x / 10000, x / 100 % 100, x % 100);
        }
        TextForm::Enum(labels) => {
            let i = le(v) as usize;
            if i > 0 {
                let l = labels.get(i - 1).ok_or_else(|| NoText {
                    reason: "decode",
                    why: format!("ENUM index {i} beyond its {} labels", labels.len()),
                })?;
                out.extend_from_slice(l);
            }
        }
        TextForm::Set(labels) => {
            let bits = le(v);
            let mut first = true;
            for (i, l) in labels.iter().enumerate().take(64) {
                if bits & (1 << i) != 0 {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(l);
                }
            }
        }
        TextForm::Json => json(v, out)?,
        TextForm::Uuid => {
            let v = padded::<16>(v)?;
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for (i, b) in v.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        TextForm::Inet6 => inet6(&padded::<16>(v)?, out),
        TextForm::Inet4 => {
            let v = padded::<4>(v)?;
            let s = format!("{}.{}.{}.{}", v[0], v[1], v[2], v[3]);
            out.extend_from_slice(s.as_bytes());
        }
        TextForm::Unsupported { reason, why } => {
            return Err(NoText {
                reason,
                why: why.clone(),
            })
        }
    }
    Ok(())
}

/// Appends one template placeholder: the key text of `v` through `filters`.
pub fn append_part(
    form: &TextForm,
    filters: &[Filter],
    v: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut (Vec<u8>, Vec<u8>),
) -> Result<(), NoText> {
    if filters.is_empty() {
        return format(form, v, out);
    }
    let (val, tmp) = scratch;
    val.clear();
    format(form, v, val)?;
    for f in filters {
        f.apply(val, tmp);
    }
    out.extend_from_slice(val);
    Ok(())
}

fn fmt_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn push_num(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [0u8; 20];
    let s = fmt_u64(n, &mut buf);
    for _ in s.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(s);
}

fn date(out: &mut Vec<u8>, y: u64, m: u64, d: u64) {
    push_num(out, y, 4);
    out.push(b'-');
    push_num(out, m, 2);
    out.push(b'-');
    push_num(out, d, 2);
}

fn clock(out: &mut Vec<u8>, h: u64, m: u64, s: u64) {
    push_num(out, h, 2);
    out.push(b':');
    push_num(out, m, 2);
    out.push(b':');
    push_num(out, s, 2);
}

/// `.` and the first `fsp` digits of the microseconds (nothing for fsp 0).
fn frac(out: &mut Vec<u8>, us: u32, fsp: u8) {
    if fsp == 0 {
        return;
    }
    let fsp = fsp.min(6) as u32;
    out.push(b'.');
    push_num(out, (us / 10u32.pow(6 - fsp)) as u64, fsp as usize);
}

/// Microseconds of the fractional part of a DATETIME2/TIMESTAMP2 (`v` after the integer).
fn frac_unsigned(v: &[u8], fsp: u8) -> Result<u32, NoText> {
    let n = (fsp as usize).div_ceil(2);
    short(n, v)?;
    Ok(match n {
        0 => 0,
        1 => v[0] as u32 * 10000,
        2 => be(&v[..2]) as u32 * 100,
        _ => be(&v[..3]) as u32,
    })
}

/// Civil date of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(z: i64) -> (i64, u64, u64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// FLOAT(M,D) / DOUBLE(M,D): exactly `dec` decimals.
fn fixed(x: f64, dec: u8, out: &mut Vec<u8>) {
    let s = format!("{x:.*}", dec as usize);
    out.extend_from_slice(s.as_bytes());
}

/// Significant digits and decimal-point position of `x` (> 0) as the server's dtoa mode 4
/// gives them: the shortest digits that read back as `x`, or, when that is longer than
/// `max`, `x` correctly rounded to `max` digits (trailing zeros dropped).
fn digits(x: f64, max: usize) -> (Vec<u8>, i32) {
    let split = |s: String| -> (Vec<u8>, i32) {
        let (m, e) = s.split_once('e').expect("exponent form");
        let mut d: Vec<u8> = m.bytes().filter(|b| b.is_ascii_digit()).collect();
        while d.len() > 1 && d.last() == Some(&b'0') {
            d.pop();
        }
        (d, e.parse::<i32>().expect("exponent") + 1)
    };
    let (d, p) = split(format!("{x:e}"));
    if d.len() <= max {
        return (d, p);
    }
    split(format!("{x:.*e}", max - 1))
}

/// A FLOAT (`float`, 6 significant digits at most) or DOUBLE value as the server prints it
/// (its `my_gcvt`): positional when the decimal point is within 15 places of the digits
/// (from 1e-15 up to 1e15), otherwise `1.5e-16` / `3.4e38`.
pub fn gcvt(x: f64, float: bool, out: &mut Vec<u8>) {
    if x.is_sign_negative() {
        out.push(b'-');
    }
    let a = x.abs();
    if a == 0.0 || !a.is_finite() {
        out.push(b'0');
        return;
    }
    let (d, decpt) = digits(a, if float { 6 } else { 17 });
    let len = d.len() as i32;
    const DBL_DIG: i32 = 15;
    if decpt > -DBL_DIG && (decpt <= DBL_DIG || len > decpt) {
        if decpt <= 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-decpt) as usize));
            out.extend_from_slice(&d);
        } else if decpt < len {
            out.extend_from_slice(&d[..decpt as usize]);
            out.push(b'.');
            out.extend_from_slice(&d[decpt as usize..]);
        } else {
            out.extend_from_slice(&d);
            out.extend(std::iter::repeat_n(b'0', (decpt - len) as usize));
        }
    } else {
        out.push(d[0]);
        if len > 1 {
            out.push(b'.');
            out.extend_from_slice(&d[1..]);
        }
        out.push(b'e');
        let e = decpt - 1;
        if e < 0 {
            out.push(b'-');
        }
        let mut buf = [0u8; 20];
        out.extend_from_slice(fmt_u64(e.unsigned_abs() as u64, &mut buf));
    }
}

/// INET6 as MariaDB prints it: lower-case hex words without leading zeros, the longest run
/// of zero words (even a single one; the first of equal runs) as `::`, and IPv4-compatible
/// (`::a.b.c.d`) and IPv4-mapped (`::ffff:a.b.c.d`) addresses with a dotted quad.
pub fn inet6(b: &[u8; 16], out: &mut Vec<u8>) {
    let w: Vec<u16> = (0..8)
        .map(|i| u16::from_be_bytes([b[2 * i], b[2 * i + 1]]))
        .collect();
    let (mut gap_pos, mut gap_len) = (-1i32, -1i32);
    let (mut rg_pos, mut rg_len) = (-1i32, -1i32);
    for (i, &x) in w.iter().enumerate() {
        if x != 0 {
            if rg_pos >= 0 {
                if rg_len > gap_len {
                    (gap_pos, gap_len) = (rg_pos, rg_len);
                }
                (rg_pos, rg_len) = (-1, -1);
            }
        } else if rg_pos >= 0 {
            rg_len += 1;
        } else {
            (rg_pos, rg_len) = (i as i32, 1);
        }
    }
    if rg_pos >= 0 && rg_len > gap_len {
        (gap_pos, gap_len) = (rg_pos, rg_len);
    }
    let mut s = String::new();
    let mut i = 0i32;
    while i < 8 {
        if i == gap_pos {
            if i == 0 {
                s.push(':');
            }
            i += gap_len - 1;
            s.push(':');
        } else if i == 6 && gap_pos == 0 && (gap_len == 6 || (gap_len == 5 && w[5] == 0xffff)) {
            let _ = write!(s, "{}.{}.{}.{}", b[12], b[13], b[14], b[15]);
            break;
        } else {
            let _ = write!(s, "{:x}", w[i as usize]);
            if i != 7 {
                s.push(':');
            }
        }
        i += 1;
    }
    out.extend_from_slice(s.as_bytes());
}

/// MySQL 8 binary JSON printed as the server prints it (`SELECT json_col`): `{"k": v, ...}`
/// with keys in stored order, `[a, b]`, strings with JSON escapes (non-ASCII as UTF-8),
/// doubles in the server's shortest form with `.0` added to integral ones, DECIMALs as
/// numbers, dates and times as quoted strings with 6 fractional digits.
fn json(v: &[u8], out: &mut Vec<u8>) -> Result<(), NoText> {
    let bad = |e: std::io::Error| NoText {
        reason: "decode",
        why: format!("binary JSON: {e}"),
    };
    // mysql_common's JSON reader indexes by the offsets the data holds; a damaged value must
    // be an error, not a panic of the stream.
    let start = out.len();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let val: jsonb::Value = ParseBuf(v).parse(())?;
        json_value(&val, out)
    }));
    match r {
        Ok(r) => r.map_err(bad),
        Err(_) => {
            out.truncate(start);
            Err(bad(std::io::Error::other("malformed binary JSON")))
        }
    }
}

fn json_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
    out.push(b'"');
}

fn json_value(v: &jsonb::Value<'_>, out: &mut Vec<u8>) -> std::io::Result<()> {
    use jsonb::Value as J;
    let mut num = |s: String| out.extend_from_slice(s.as_bytes());
    match v {
        J::Null => num("null".into()),
        J::Bool(b) => num(b.to_string()),
        J::I16(x) => num(x.to_string()),
        J::U16(x) => num(x.to_string()),
        J::I32(x) => num(x.to_string()),
        J::U32(x) => num(x.to_string()),
        J::I64(x) => num(x.to_string()),
        J::U64(x) => num(x.to_string()),
        J::F64(x) => {
            let start = out.len();
            gcvt(*x, false, out);
            if !out[start..].iter().any(|&c| c == b'.' || c == b'e') {
                out.extend_from_slice(b".0");
            }
        }
        J::String(s) => json_str(s.str_raw(), out),
        J::SmallArray(a) => json_array(a.iter(), out)?,
        J::LargeArray(a) => json_array(a.iter(), out)?,
        J::SmallObject(o) => json_object(o.iter(), out)?,
        J::LargeObject(o) => json_object(o.iter(), out)?,
        J::Opaque(o) => {
            let data = o.data_raw();
            let packed = || -> std::io::Result<i64> {
                data.first_chunk::<8>()
                    .map(|b| i64::from_le_bytes(*b))
                    .ok_or_else(|| std::io::Error::other("short JSON temporal value"))
            };
            use mysql_common::binlog::time::MysqlTime;
            match o.value_type() {
                ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                    let d = Decimal::read_packed(data, false)?;
                    out.extend_from_slice(d.to_string().as_bytes());
                }
                ColumnType::MYSQL_TYPE_DATE => {
                    let t = MysqlTime::from_int64_date_packed(packed()?);
                    out.push(b'"');
                    date(out, t.year as u64, t.month as u64, t.day as u64);
                    out.push(b'"');
                }
                ColumnType::MYSQL_TYPE_TIME => {
                    let t = MysqlTime::from_int64_time_packed(packed()?);
                    out.push(b'"');
                    if t.neg {
                        out.push(b'-');
                    }
                    clock(out, t.hour as u64, t.minute as u64, t.second as u64);
                    frac(out, t.second_part, 6);
                    out.push(b'"');
                }
                ColumnType::MYSQL_TYPE_DATETIME | ColumnType::MYSQL_TYPE_TIMESTAMP => {
                    let t = MysqlTime::from_int64_datetime_packed(packed()?);
                    out.push(b'"');
                    date(out, t.year as u64, t.month as u64, t.day as u64);
                    out.push(b' ');
                    clock(out, t.hour as u64, t.minute as u64, t.second as u64);
                    frac(out, t.second_part, 6);
                    out.push(b'"');
                }
                other => {
                    // Other opaque values (binary strings...): as MySQL prints them.
                    let s = format!("base64:type{}:{}", other as u8, base64(data));
                    json_str(s.as_bytes(), out);
                }
            }
        }
    }
    Ok(())
}

fn json_array<'a>(
    it: impl Iterator<Item = std::io::Result<jsonb::Value<'a>>>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.push(b'[');
    for (i, v) in it.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        json_value(&v?, out)?;
    }
    out.push(b']');
    Ok(())
}

fn json_object<'a>(
    it: impl Iterator<Item = std::io::Result<(jsonb::ObjectKey<'a>, jsonb::Value<'a>)>>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.push(b'{');
    for (i, kv) in it.enumerate() {
        let (k, v) = kv?;
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        json_str(k.value_raw(), out);
        out.extend_from_slice(b": ");
        json_value(&v, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(x: f64, float: bool) -> String {
        let mut o = Vec::new();
        gcvt(x, float, &mut o);
        String::from_utf8(o).unwrap()
    }

    /// Every pair was read back from MariaDB 10.11 with a text-protocol SELECT.
    #[test]
    fn floats_as_mariadb_prints_them() {
        let f = |x: f32| g(x as f64, true);
        assert_eq!(f(3.4e38), "3.4e38");
        assert_eq!(f(-3.4e38), "-3.4e38");
        assert_eq!(f(1.1), "1.1");
        assert_eq!(f(-1.17549e-38), "-1.17549e-38");
        assert_eq!(f(123456789.0), "123457000");
        assert_eq!(f(0.000001), "0.000001");
        assert_eq!(f(1e7), "10000000");
        assert_eq!(f(1e13), "10000000000000");
        assert_eq!(f(1e38), "1e38");
        assert_eq!(f(1234567.0), "1234570");
        assert_eq!(f(1e-8), "0.00000001");
        assert_eq!(f(0.0), "0");
        let d = |x: f64| g(x, false);
        assert_eq!(d(1.7976931348623157e308), "1.7976931348623157e308");
        assert_eq!(d(0.1), "0.1");
        assert_eq!(d(1e-300), "1e-300");
        assert_eq!(d(1e14), "100000000000000");
        assert_eq!(d(1e15), "1e15");
        assert_eq!(d(1234567890123456.0), "1.234567890123456e15");
        assert_eq!(d(123456789012345.6), "123456789012345.6");
        assert_eq!(d(1.5e-15), "0.0000000000000015");
        assert_eq!(d(1e-16), "1e-16");
        assert_eq!(d(123456789012345678.0), "1.2345678901234568e17");
        assert_eq!(d(0.12345678901234568), "0.12345678901234568");
        assert_eq!(d(-1e14), "-100000000000000");
    }

    /// A MySQL binary JSON array built by hand: `[1.0, "a\"\n é", true, -5]`.
    #[test]
    fn binary_json_doubles_escapes_and_inline_values() {
        let mut v = vec![0x02u8]; // small array
        v.extend_from_slice(&4u16.to_le_bytes());
        v.extend_from_slice(&31u16.to_le_bytes());
        v.extend_from_slice(&[0x0b, 16, 0]); // double at 16
        v.extend_from_slice(&[0x0c, 24, 0]); // string at 24
        v.extend_from_slice(&[0x04, 1, 0]); // literal true, inline
        v.extend_from_slice(&[0x05]); // int16 -5, inline
        v.extend_from_slice(&(-5i16).to_le_bytes());
        v.extend_from_slice(&1.0f64.to_le_bytes());
        let s = "a\"\n é".as_bytes();
        v.push(s.len() as u8);
        v.extend_from_slice(s);
        let mut o = Vec::new();
        format(&TextForm::Json, &v, &mut o).unwrap();
        assert_eq!(
            String::from_utf8(o).unwrap(),
            r#"[1.0, "a\"\n é", true, -5]"#
        );
        // Damaged: an error, never a panic.
        let mut o = Vec::new();
        assert!(format(&TextForm::Json, &v[..20], &mut o).is_err());
        assert!(o.is_empty());
    }

    #[test]
    fn inet6_as_mariadb_prints_it() {
        let p = |s: &str| {
            let a: std::net::Ipv6Addr = s.parse().unwrap();
            let mut o = Vec::new();
            inet6(&a.octets(), &mut o);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(p("::1"), "::1");
        assert_eq!(p("::"), "::");
        assert_eq!(p("ffff::ffff:1.2.3.4"), "ffff::ffff:102:304");
        assert_eq!(p("::ffff:1.2.3.4"), "::ffff:1.2.3.4");
        assert_eq!(p("::1.2.3.4"), "::1.2.3.4");
        assert_eq!(p("2001:db8::1"), "2001:db8::1");
        assert_eq!(p("1:0:2:3:4:5:6:7"), "1::2:3:4:5:6:7");
        assert_eq!(p("1:2:3:4:5:6:7:0"), "1:2:3:4:5:6:7::");
    }

    #[test]
    fn latin1_is_cp1252() {
        let mut o = Vec::new();
        Charset::Latin1.transcode(b"caf\xe9 \x80\x81\x9f", &mut o);
        assert_eq!(String::from_utf8(o).unwrap(), "café €\u{81}Ÿ");
    }

    #[test]
    fn temporal_forms() {
        let z = Arc::new(Zone::utc());
        let t = |form: TextForm, v: &[u8]| {
            let mut o = Vec::new();
            format(&form, v, &mut o).unwrap();
            String::from_utf8(o).unwrap()
        };
        // TIMESTAMP(0) 1706704496 = 2024-01-31 12:34:56 UTC.
        let ts = TextForm::Timestamp {
            fsp: 0,
            old: false,
            zone: z.clone(),
        };
        assert_eq!(
            t(ts.clone(), &1706704496u32.to_be_bytes()),
            "2024-01-31 12:34:56"
        );
        assert_eq!(t(ts, &[0, 0, 0, 0]), "0000-00-00 00:00:00");
        // DATE: day | month << 5 | year << 9.
        let d = 31 | (1 << 5) | (2024 << 9);
        assert_eq!(
            t(TextForm::Date, &(d as u32).to_le_bytes()[..3]),
            "2024-01-31"
        );
        assert_eq!(t(TextForm::Date, &[0, 0, 0]), "0000-00-00");
        assert_eq!(t(TextForm::Year, &[124]), "2024");
    }

    fn col(ty: u8, meta: &[u8], unsigned: bool) -> ColSpec {
        ColSpec::new(ty, meta, unsigned)
    }

    fn fmt(c: &ColSpec, v: &[u8]) -> String {
        let meta = ColumnMeta {
            labels: Some(std::sync::Arc::new(vec![b"a".to_vec(), b"b".to_vec()])),
            ..Default::default()
        };
        let form = TextForm::of(c, &meta, &std::sync::Arc::new(Zone::utc()));
        let mut out = Vec::new();
        format(&form, v, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_signed_and_unsigned() {
        assert_eq!(fmt(&col(ty::TINY, &[], false), &[0xff]), "-1");
        assert_eq!(fmt(&col(ty::TINY, &[], true), &[0xff]), "255");
        assert_eq!(fmt(&col(ty::INT24, &[], false), &[0xff, 0xff, 0xff]), "-1");
        assert_eq!(fmt(&col(ty::LONG, &[], false), &42u32.to_le_bytes()), "42");
        assert_eq!(
            fmt(&col(ty::LONGLONG, &[], true), &u64::MAX.to_le_bytes()),
            "18446744073709551615"
        );
        assert_eq!(
            fmt(&col(ty::LONGLONG, &[], false), &i64::MIN.to_le_bytes()),
            "-9223372036854775808"
        );
    }

    #[test]
    fn enum_labels() {
        // ENUM: STRING with meta [ENUM, 1].
        let c = col(ty::STRING, &[ty::ENUM, 1], false);
        assert_eq!(fmt(&c, &[2]), "b");
    }

    #[test]
    fn decimal() {
        // DECIMAL(5,2) value 123.45: intg 3 digits (2 bytes), frac 2 digits (1 byte).
        let c = col(ty::NEWDECIMAL, &[5, 2], false);
        let v = [0x80, 123, 45]; // sign bit set: positive
        assert_eq!(fmt(&c, &v), "123.45");
    }
}
