//! Property test of the form parser over generated bodies: no panic, every limit holds, and
//! the tree it builds is bounded by the body (so memory is too).

use b24_events::form::{self, FormError, Limits};
use serde_json::Value;

/// xorshift64*: cheap, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Tokens that exercise every branch of the grammar, including broken escapes and UTF-8.
const PIECES: &[&[u8]] = &[
    b"[",
    b"]",
    b"[]",
    b"&",
    b"=",
    b"%",
    b"%5B",
    b"%5D",
    b"%2",
    b"%zz",
    b"+",
    b"a",
    b"data",
    b"auth[member_id]",
    b"auth[application_token]",
    b"event",
    b"[x]",
    b"\xff",
    b"\xc3\xa9",
    b"%C3",
    b"%A9",
    b"0",
    b"[[",
    b"]]",
    b"&&",
    b"==",
];

const HEADS: &[&[u8]] = &[b"event", b"data", b"auth", b"ts", b"x", b"d%5Ba%5D"];
const SEGMENTS: &[&[u8]] = &[
    b"[]",
    b"[a]",
    b"[FIELDS]",
    b"[0]",
    b"[member_id]",
    b"%5Bb%5D",
];
const VALUES: &[&[u8]] = &[
    b"1", b"a+b", b"%41", b"7405", b"Y", b"%C3%A9", b"", b"%zz", b"\xff",
];

/// Nodes and total string bytes of a tree, iteratively.
fn size(v: &Value) -> (usize, usize) {
    let (mut nodes, mut bytes) = (0, 0);
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        nodes += 1;
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    bytes += k.len();
                    stack.push(c);
                }
            }
            Value::String(s) => bytes += s.len(),
            _ => {}
        }
    }
    (nodes, bytes)
}

#[test]
fn a_million_generated_bodies() {
    let lim = Limits {
        max_body: 16 * 1024,
        max_fields: 16,
        max_key_len: 48,
        max_depth: 6,
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut body = Vec::with_capacity(8192);
    let (mut ok, mut refused) = (0usize, 0usize);
    let t = std::time::Instant::now();
    for i in 0..1_000_000usize {
        body.clear();
        if i % 2 == 0 {
            // Well-shaped `key[seg]…=value` fields, some too deep or too many.
            let fields = 1 + rng.below(if i % 1000 == 0 { 40 } else { 4 });
            for f in 0..fields {
                if f > 0 {
                    body.push(b'&');
                }
                body.extend_from_slice(HEADS[rng.below(HEADS.len())]);
                for _ in 0..rng.below(if i % 100 == 0 { 9 } else { 6 }) {
                    body.extend_from_slice(SEGMENTS[rng.below(SEGMENTS.len())]);
                }
                body.push(b'=');
                body.extend_from_slice(VALUES[rng.below(VALUES.len())]);
            }
        } else {
            // Random pieces; every 1,000th body long, to hit the bounds.
            let pieces = if i % 1000 == 1 {
                600
            } else {
                1 + rng.below(12)
            };
            for _ in 0..pieces {
                body.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
        }
        let scanned = form::scan(&body, &lim);
        match form::build(&body, &lim) {
            Ok(v) => {
                ok += 1;
                assert!(scanned.is_ok(), "scan refused what build accepts: {body:?}");
                let (nodes, bytes) = size(&v);
                // Each field adds at most max_depth objects and one string; each string's
                // bytes come from the body (decoding only shrinks; `[]` indexes are short).
                assert!(
                    nodes <= 1 + lim.max_fields * (lim.max_depth + 1),
                    "{body:?}"
                );
                assert!(
                    bytes <= body.len() + lim.max_fields * lim.max_depth * 4,
                    "{body:?}"
                );
            }
            Err(FormError::TooLarge(_)) => unreachable!("bodies stay under max_body"),
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "1,000,000 bodies: {ok} parsed, {refused} refused, in {:?}",
        t.elapsed()
    );
    assert!(ok > 200_000 && refused > 200_000, "both paths exercised");
}

#[test]
fn adversarial_shapes_are_bounded() {
    let lim = Limits::default();
    for n in [5000, 10_000, 100_000] {
        let body = format!("event=X&data{}=1", "[]".repeat(n));
        assert!(matches!(
            form::scan(body.as_bytes(), &lim),
            Err(FormError::KeyTooLong(_) | FormError::TooLarge(_))
        ));
        assert!(form::build(body.as_bytes(), &lim).is_err());
    }
    // Many fields, each shallow: refused past max_fields before building anything large.
    let wide = "a[]=1&".repeat(5000);
    assert_eq!(
        form::scan(wide.as_bytes(), &lim),
        Err(FormError::TooManyFields(lim.max_fields))
    );
    // Within bounds, a 32-deep key builds and round-trips through JSON text.
    let deep = format!("d{}=v", "[k]".repeat(31));
    let v = form::build(deep.as_bytes(), &lim).unwrap();
    let back: Value = serde_json::from_str(&v.to_string()).unwrap();
    assert_eq!(back, v);
}
