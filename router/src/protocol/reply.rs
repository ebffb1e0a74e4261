//! Replies: what a request gets back ([`Reply`], from a server or made by the router), and
//! the text `get` reply shape that split multi-gets are merged from. (Backend replies are
//! meta replies; `crate::backend::codec` reads them.)

use bytes::Bytes;

/// A reply on its way back.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Bytes exactly as the server sent them (one reply).
    Data(Bytes),
    /// A reply assembled from pieces (a multi-get merged from several servers).
    Chunks(Vec<Bytes>),
    /// The router could not get a reply (`SERVER_ERROR ...\r\n`), e.g. the server is down.
    Error(Bytes),
}

impl Reply {
    pub fn error(msg: &str) -> Reply {
        Reply::Error(Bytes::from(format!("SERVER_ERROR {msg}\r\n")))
    }

    /// The first bytes of the reply (its status line starts here).
    pub fn head(&self) -> &[u8] {
        match self {
            Reply::Data(b) | Reply::Error(b) => b,
            Reply::Chunks(c) => c.first().map_or(&b""[..], |b| &b[..]),
        }
    }

    /// True for a `SERVER_ERROR` the router made: routes that fail over look at this.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

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
