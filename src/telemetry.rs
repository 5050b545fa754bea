//! Logging. Human or JSON lines; a redaction layer on the writer replaces anything shaped like a
//! personnummer or samordningsnummer (10 or 12 digits, with or without separator) so that an id
//! that slipped into a message still never reaches the log.

use crate::config::{LogFormat, TelemetrySettings};
use regex::Regex;
use std::io::Write;
use std::sync::OnceLock;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

fn id_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // 12 digits (century) or 10, optional -/+ before the last four; not part of a longer number.
    RE.get_or_init(|| Regex::new(r"(?:^|[^0-9])((?:18|19|20)?[0-9]{6}[-+]?[0-9]{4})(?:$|[^0-9])").expect("valid regex"))
}

/// Replace identity-shaped digit runs with `<pnr>`.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    let re = id_pattern();
    if !re.is_match(text) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    // Matches can overlap at the delimiter; walk capture groups manually.
    let mut pos = 0;
    while let Some(c) = re.captures_at(text, pos) {
        let m = c.get(1).expect("group 1");
        pos = m.end();
        // Only digit runs that could be a birth date (MMDD, or DD+60) are identities: HSA ids
        // (SE2321000156-…) and organisation numbers stay readable.
        if looks_like_birth_date(m.as_str()) {
            out.push_str(&text[last..m.start()]);
            out.push_str("<pnr>");
            last = m.end();
        }
        if pos >= text.len() {
            break;
        }
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

fn looks_like_birth_date(id: &str) -> bool {
    let digits: Vec<u32> = id.chars().filter(|c| c.is_ascii_digit()).filter_map(|c| c.to_digit(10)).collect();
    let d = &digits[digits.len() - 10..];
    let month = d[2] * 10 + d[3];
    let day = d[4] * 10 + d[5];
    (1..=12).contains(&month) && ((1..=31).contains(&day) || (61..=91).contains(&day))
}

/// A writer that redacts each formatted event before it reaches the real sink.
#[derive(Clone)]
pub struct RedactingWriter<W> {
    inner: W,
}

pub struct RedactingGuard<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Write for RedactingGuard<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for RedactingGuard<W> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let _ = self.inner.write_all(redact(&text).as_bytes());
        let _ = self.inner.flush();
    }
}

impl<'a, M> MakeWriter<'a> for RedactingWriter<M>
where
    M: MakeWriter<'a>,
{
    type Writer = RedactingGuard<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingGuard { inner: self.inner.make_writer(), buf: Vec::with_capacity(256) }
    }
}

/// Install the global subscriber (once). Logs go to stderr.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_env("RB_LOG").unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let writer = RedactingWriter { inner: std::io::stderr };
    let result = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).json().with_current_span(true).try_init(),
        LogFormat::Human => tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false).try_init(),
    };
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::redact;
    #[test]
    fn redacts_every_written_form() {
        for s in ["191212121212", "19121212-1212", "121212-1212", "1212121212", "121212+1212"] {
            let line = format!("patient {s} failed");
            assert_eq!(redact(&line), "patient <pnr> failed", "{s}");
        }
        assert_eq!(redact("a=191212121212,b=201212121212"), "a=<pnr>,b=<pnr>");
        // Other numbers survive: ports, short ids, long hashes.
        assert_eq!(redact("port 8080 id 12345"), "port 8080 id 12345");
        assert_eq!(redact("hash 1234567890123456789"), "hash 1234567890123456789");
        // HSA ids and organisation numbers are not birth dates.
        assert_eq!(redact("unit SE2321000156-FT01 via 5565594230"), "unit SE2321000156-FT01 via 5565594230");
        assert_eq!(redact("samordning 701063-2391"), "samordning <pnr>");
    }
}
