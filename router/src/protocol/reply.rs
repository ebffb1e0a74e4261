//! Backend side: where one reply ends in a server's byte stream. Pipelining depends on it:
//! replies are matched to requests purely by order, so each must be delimited exactly.

use super::Frame;

/// Progress through a reply that has not fully arrived, so a large multi-get reply is not
/// rescanned from its start on every read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan {
    pos: usize,
    /// `VALUE` blocks seen so far (hits).
    pub hits: u32,
}

/// The server sent something that is not a memcached reply: the connection is out of sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desync;

/// Length of the complete reply at the start of `buf`, `None` if more bytes are needed.
pub fn scan(frame: Frame, buf: &[u8], st: &mut Scan) -> Result<Option<usize>, Desync> {
    match frame {
        Frame::Line => Ok(memchr::memchr(b'\n', buf).map(|nl| nl + 1)),
        Frame::Meta => {
            let Some(nl) = memchr::memchr(b'\n', buf) else {
                return Ok(None);
            };
            if !buf.starts_with(b"VA ") {
                return Ok(Some(nl + 1));
            }
            let len = data_len(&buf[..nl], 1).ok_or(Desync)?;
            let total = nl + 1 + len + 2;
            Ok((buf.len() >= total).then_some(total))
        }
        Frame::Values => loop {
            let rest = &buf[st.pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                return Ok(None);
            };
            if !rest.starts_with(b"VALUE ") {
                // END, or an error line that replaces the whole reply.
                let total = st.pos + nl + 1;
                return Ok(Some(total));
            }
            let len = data_len(&rest[..nl], 3).ok_or(Desync)?;
            let next = st.pos + nl + 1 + len + 2;
            if buf.len() < next {
                return Ok(None);
            }
            st.pos = next;
            st.hits += 1;
        },
    }
}

/// The decimal token at `index` of a reply line (`VALUE k f LEN`, `VA LEN ...`).
fn data_len(line: &[u8], index: usize) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let tok = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(index)?;
    super::parse_u64(tok).and_then(|v| usize::try_from(v).ok())
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
