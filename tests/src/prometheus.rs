//! Reading a program's Prometheus endpoint, for tests that count what squeal and the router
//! did.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;

use crate::process::loopback;

/// The text of `GET /metrics` on a loopback port.
pub fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(loopback(port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// A metric's value in `text`: a bare name sums all its label sets, `name{labels}` is one
/// sample; `None` when no sample matches.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| *key == name || key.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn bare_names_sum_label_sets_and_labelled_names_pick_one() {
        let text =
            "# TYPE k counter\nk{outcome=\"deleted\"} 3\nk{outcome=\"spooled\"} 2\nk_other 9\n";
        assert_eq!(sample(text, "k"), Some(5.0));
        assert_eq!(sample(text, "k{outcome=\"spooled\"}"), Some(2.0));
        assert_eq!(sample(text, "missing"), None);
    }
}
