//! Client-facing replies: the text `get` reply shape that split multi-gets are merged from.
//! (Backend replies are meta replies; `crate::backend::codec` reads them.)

/// The decimal token at `index` of a reply line (`VALUE k f LEN`).
fn data_len(line: &[u8], index: usize) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let tok = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(index)?;
    super::number::strtoull(tok).and_then(|v| usize::try_from(v).ok())
}

/// Splits a get reply into its `VALUE` blocks: `(key, whole block)` positions.
pub fn value_blocks(buf: &[u8]) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
        let line = &buf[pos..pos + nl];
        if !line.starts_with(b"VALUE ") {
            break;
        }
        let Some(len) = data_len(line, 3) else { break };
        let key_start = pos + 6;
        let key_end = key_start + line[6..].iter().position(|&b| b == b' ').unwrap_or(0);
        let end = pos + nl + 1 + len + 2;
        if end > buf.len() {
            break;
        }
        out.push((key_start..key_end, pos..end));
        pos = end;
    }
    out
}
