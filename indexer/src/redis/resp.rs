//! Just enough of the Redis protocol (RESP2) for the caller-ID reads: writing
//! commands and reading replies straight from a socket buffer.
//!
//! The caller-ID path sends one small pipeline after another and reads back
//! hashes of a few kilobytes. Through the `redis` crate, each pipeline went
//! to the connection's own task and every reply through a general parser into
//! `Value`s, then into strings: under load, a tenth of the process's CPU.
//! Here the task that batches the lookups writes and reads its own
//! connection, and a reply is read once, into the strings a lookup needs.

/// Nesting deeper than this is refused (Redis answers these reads with
/// arrays of strings, one level deep).
const MAX_DEPTH: usize = 4;

/// Longest line (`$<len>`, `-ERR ...`) read before giving up on the peer.
const MAX_LINE: usize = 4096;

/// Largest bulk string or array accepted: more than any index entry, far less
/// than memory.
const MAX_LEN: usize = 512 << 20;

/// Appends `args` as one command.
pub(super) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        push_decimal(out, arg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// One reply, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// `None` is nil.
    Bulk(Option<&'a [u8]>),
    /// `None` is a nil array.
    Array(Option<Vec<Frame<'a>>>),
}

/// The peer sent something that is not RESP2 (or is beyond the limits
/// above): the connection cannot be trusted any further.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ProtocolError(pub String);

/// The reply at the start of `buf` and how many bytes it takes, or `None`
/// while it has not fully arrived.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ProtocolError> {
    let mut at = 0;
    Ok(frame(buf, &mut at, 0)?.map(|f| (f, at)))
}

fn frame<'a>(
    buf: &'a [u8],
    at: &mut usize,
    depth: usize,
) -> Result<Option<Frame<'a>>, ProtocolError> {
    let Some(line) = line(buf, *at)? else {
        return Ok(None);
    };
    let (kind, rest) = match line.split_first() {
        Some((k, rest)) => (*k, rest),
        None => return Err(ProtocolError("an empty reply line".into())),
    };
    let after_line = *at + line.len() + 2;
    match kind {
        b'+' => {
            *at = after_line;
            Ok(Some(Frame::Simple(rest)))
        }
        b'-' => {
            *at = after_line;
            Ok(Some(Frame::Error(rest)))
        }
        b':' => {
            *at = after_line;
            Ok(Some(Frame::Integer(integer(rest)?)))
        }
        b'$' => {
            let Some(len) = length(rest)? else {
                *at = after_line;
                return Ok(Some(Frame::Bulk(None)));
            };
            let end = after_line + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("a bulk string without its CRLF".into()));
            }
            *at = end + 2;
            Ok(Some(Frame::Bulk(Some(&buf[after_line..end]))))
        }
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(ProtocolError("arrays nested too deep".into()));
            }
            let Some(len) = length(rest)? else {
                *at = after_line;
                return Ok(Some(Frame::Array(None)));
            };
            let mut pos = after_line;
            // Each element takes at least 3 bytes: never reserve for more
            // elements than the buffer could hold.
            let mut items = Vec::with_capacity(len.min((buf.len() - pos) / 3 + 1));
            for _ in 0..len {
                match frame(buf, &mut pos, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            *at = pos;
            Ok(Some(Frame::Array(Some(items))))
        }
        other => Err(ProtocolError(format!(
            "a reply starting with byte {other:#04x}"
        ))),
    }
}

/// The line starting at `at`, without its CRLF.
fn line(buf: &[u8], at: usize) -> Result<Option<&[u8]>, ProtocolError> {
    let rest = &buf[at.min(buf.len())..];
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some(&rest[..end])),
        None if window.len() > MAX_LINE => Err(ProtocolError("a reply line too long".into())),
        None => Ok(None),
    }
}

fn integer(digits: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError("a malformed integer".into()))
}

/// A length, or `None` for -1 (nil).
fn length(digits: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match integer(digits)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_LEN)
            .map(Some)
            .ok_or_else(|| ProtocolError(format!("a length of {n}"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_written_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"HGETALL", b"crm:g1:ph:+6581226418"]);
        command(&mut out, &[b"PING", b""]);
        assert_eq!(
            out,
            b"*2\r\n$7\r\nHGETALL\r\n$21\r\ncrm:g1:ph:+6581226418\r\n*2\r\n$4\r\nPING\r\n$0\r\n\r\n"
        );
        let mut big = Vec::new();
        push_decimal(&mut big, 1_234_567_890);
        push_decimal(&mut big, 0);
        assert_eq!(big, b"12345678900");
    }

    #[test]
    fn every_kind_of_reply_is_read() {
        let input: &[u8] = b"+OK\r\n-WRONGTYPE no\r\n:-42\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n*0\r\n*2\r\n$1\r\na\r\n*1\r\n:7\r\n";
        let mut at = 0;
        let mut frames = Vec::new();
        while at < input.len() {
            let (f, used) = parse(&input[at..]).unwrap().unwrap();
            frames.push(f);
            at += used;
        }
        assert_eq!(
            frames,
            [
                Frame::Simple(b"OK"),
                Frame::Error(b"WRONGTYPE no"),
                Frame::Integer(-42),
                Frame::Bulk(Some(b"he\r\no")),
                Frame::Bulk(None),
                Frame::Array(None),
                Frame::Array(Some(vec![])),
                Frame::Array(Some(vec![
                    Frame::Bulk(Some(b"a")),
                    Frame::Array(Some(vec![Frame::Integer(7)])),
                ])),
            ]
        );
    }

    #[test]
    fn a_reply_cut_anywhere_waits_for_the_rest() {
        let whole: &[u8] = b"*4\r\n$36\r\n0193a5b0-0000-7000-8000-000000000000\r\n$13\r\n{\"name\":\"A\"}\n\r\n$1\r\nx\r\n$0\r\n\r\n";
        let (frame, used) = parse(whole).unwrap().unwrap();
        assert_eq!(used, whole.len());
        let Frame::Array(Some(items)) = frame else {
            panic!("not an array")
        };
        assert_eq!(items.len(), 4);
        assert_eq!(items[1], Frame::Bulk(Some(b"{\"name\":\"A\"}\n")));
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_resp_is_refused() {
        for bad in [
            &b"?\r\n"[..],
            b"\r\n",
            b":12x\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b'+'; MAX_LINE + 8];
        assert!(parse(&long).is_err());
        // A long line still arriving is not refused before it is too long.
        assert_eq!(parse(&long[..MAX_LINE]).unwrap(), None);
    }
}
