//! Where `tracing` events go: stderr (stdout carries data only), each line passed through the
//! process-wide redactor first.
//!
//! Library crates log errors as they come (a portal's refusal, a transport failure, a store
//! error), and such a message may echo a request path with a webhook code or a form with a
//! token. Redacting the formatted line here covers every event of every crate, whatever its
//! fields, with the same redactor the CLI's own messages pass ([`b24_guard::redact::text`]:
//! every secret the configuration made known, and whatever has the shape of one).

use std::io::Write;

/// The log writer: one per event, which formats into a buffer and writes the redacted line to
/// stderr in one piece when the event is done.
#[derive(Default)]
pub struct RedactedStderr {
    buf: Vec<u8>,
}

impl Write for RedactedStderr {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let line = redact(&self.buf);
        self.buf.clear();
        std::io::stderr().lock().write_all(line.as_bytes())
    }
}

impl Drop for RedactedStderr {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeRedacted {
    type Writer = RedactedStderr;

    fn make_writer(&'a self) -> RedactedStderr {
        RedactedStderr::default()
    }
}

/// Makes a [`RedactedStderr`] per event.
pub struct MakeRedacted;

fn redact(bytes: &[u8]) -> String {
    b24_guard::redact::text(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_and_credential_shapes_are_redacted() {
        b24_guard::redact::remember(["s3cr3t-access-token-value".to_string()]);
        let line = redact(
            b"WARN offline pull: token s3cr3t-access-token-value refused at /rest/1/abcdef123456/x?auth=zzzzzzzz\n",
        );
        assert!(!line.contains("s3cr3t-access-token-value"), "{line}");
        assert!(!line.contains("abcdef123456"), "{line}");
        assert!(!line.contains("zzzzzzzz"), "{line}");
        assert!(line.starts_with("WARN offline pull"), "{line}");
        assert!(line.ends_with('\n'));
    }
}
