//! The time zone TIMESTAMP values are shown in: the server's `@@time_zone` (read by the
//! live source) or `[extract] time_zone`, resolved from /usr/share/zoneinfo or an offset.

/// A time zone for TIMESTAMP columns: UTC offsets by transition time (from a TZif file in
/// /usr/share/zoneinfo, as the server's own time zone tables are loaded) or one fixed
/// offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    /// Offset (seconds east of UTC) before the first transition.
    initial: i32,
    /// `(utc time, offset from then on)`, sorted by time.
    transitions: Vec<(i64, i32)>,
}

impl Zone {
    pub fn utc() -> Zone {
        Zone::fixed("+00:00", 0)
    }

    pub fn fixed(name: &str, offset: i32) -> Zone {
        Zone {
            name: name.to_string(),
            initial: offset,
            transitions: Vec::new(),
        }
    }

    /// Resolves what `@@time_zone` (or a `[extract] time_zone` setting) names: `SYSTEM` is
    /// replaced by `system` (the server's `@@system_time_zone`) first; then `+hh:mm` /
    /// `-hh:mm`, `UTC`/`GMT`, or a zone name found under `zoneinfo` (/usr/share/zoneinfo).
    pub fn resolve(name: &str, system: &str, zoneinfo: &std::path::Path) -> Result<Zone, String> {
        let n = if name.eq_ignore_ascii_case("SYSTEM") {
            system
        } else {
            name
        };
        let n = n.trim();
        if let Some(off) = parse_offset(n) {
            return Ok(Zone::fixed(n, off));
        }
        if matches!(n.to_ascii_uppercase().as_str(), "UTC" | "GMT" | "Z" | "UCT") {
            return Ok(Zone::fixed(n, 0));
        }
        if n.is_empty() || n.contains("..") || n.starts_with('/') {
            return Err(format!("time zone {n:?} is not a zone name"));
        }
        let path = zoneinfo.join(n);
        let data = std::fs::read(&path).map_err(|e| {
            format!(
                "time zone {n:?} (the server's{}): cannot read {}: {e}",
                if n == system { " system time zone" } else { "" },
                path.display()
            )
        })?;
        Zone::from_tzif(n, &data).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a TZif file (RFC 8536), version 1 or the 64-bit data of version 2+.
    pub fn from_tzif(name: &str, d: &[u8]) -> Result<Zone, String> {
        fn be32(d: &[u8], at: usize) -> Result<u32, String> {
            d.get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4")))
                .ok_or_else(|| "truncated TZif file".to_string())
        }
        if d.len() < 44 || &d[..4] != b"TZif" {
            return Err("not a TZif file".into());
        }
        let counts = |at: usize| -> Result<[usize; 6], String> {
            let mut c = [0usize; 6];
            for (i, v) in c.iter_mut().enumerate() {
                *v = be32(d, at + 20 + 4 * i)? as usize;
            }
            Ok(c)
        };
        let [isut, isstd, leap, timecnt, typecnt, charcnt] = counts(0)?;
        let mut at = 44;
        let mut tsize = 4;
        if d[4] >= b'2' {
            at += timecnt * 4 + timecnt + typecnt * 6 + charcnt + leap * 8 + isstd + isut;
            if d.get(at..at + 4) != Some(b"TZif") {
                return Err("bad TZif version 2 header".into());
            }
            tsize = 8;
        }
        let [_, _, _, timecnt, typecnt, _] = counts(at)?;
        at += 44;
        let times_at = at;
        let idx_at = times_at + timecnt * tsize;
        let types_at = idx_at + timecnt;
        if d.len() < types_at + typecnt * 6 || typecnt == 0 {
            return Err("truncated TZif file".into());
        }
        let offset_of = |t: usize| -> Result<i32, String> {
            if t >= typecnt {
                return Err("TZif transition names a missing type".into());
            }
            Ok(be32(d, types_at + t * 6)? as i32)
        };
        let mut transitions = Vec::with_capacity(timecnt);
        for i in 0..timecnt {
            let t = if tsize == 8 {
                i64::from_be_bytes(
                    d[times_at + 8 * i..times_at + 8 * i + 8]
                        .try_into()
                        .expect("8"),
                )
            } else {
                be32(d, times_at + 4 * i)? as i32 as i64
            };
            transitions.push((t, offset_of(d[idx_at + i] as usize)?));
        }
        // Before the first transition: the first standard-time type (type 0 by convention).
        let initial = offset_of(0)?;
        Ok(Zone {
            name: name.to_string(),
            initial,
            transitions,
        })
    }

    /// Offset from UTC at `t` (seconds since the epoch). Past the last transition of the
    /// file (2037 in the "fat" files Debian ships) the last offset stays in force.
    pub fn offset_at(&self, t: i64) -> i32 {
        match self.transitions.partition_point(|(at, _)| *at <= t) {
            0 => self.initial,
            i => self.transitions[i - 1].1,
        }
    }
}

fn parse_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones() {
        let z = Zone::resolve(
            "SYSTEM",
            "Europe/Berlin",
            std::path::Path::new("/usr/share/zoneinfo"),
        )
        .unwrap();
        // 2024-01-31 12:34:56 UTC is 13:34:56 in Berlin (CET), 2024-07-01 in CEST.
        assert_eq!(z.offset_at(1706704496), 3600);
        assert_eq!(z.offset_at(1719835200), 7200);
        let z = Zone::resolve("+05:30", "UTC", std::path::Path::new("/nonexistent")).unwrap();
        assert_eq!(z.offset_at(0), 19800);
        assert!(Zone::resolve(
            "Nowhere/Nope",
            "",
            std::path::Path::new("/usr/share/zoneinfo")
        )
        .is_err());
    }
}
