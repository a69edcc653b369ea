//! A stable-Rust fuzz harness for the vector text parser (`vector_in`'s core): random and
//! mutated inputs, each must parse or be rejected with an error (never a panic), an
//! accepted vector must print and parse back bit for bit, and every error must render.
//!
//! usage: cargo run --release -p akidb-core --example fuzz_text -- [INPUTS] [SEED]
//! Prints one JSON line: inputs, accepted, rejected, panics, round-trip failures, seconds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use akidb_core::vector::{format_vector, parse_vector};

/// A small fast generator (xorshift64*), so runs repeat from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SEEDS: &[&str] = &[
    "[1,2,3]", "[ 1.5 , -2e-3 ,3.25e+10 ]", "[0]", "[-0]", "[1e38]", "[3.4028235e38]", "[1e-45]", "[0x1p-3]",
    "[nan]", "[inf]", "[-Infinity]", "[]", "[", "]", "[1,]", "[,1]", "[1 2]", "[1,2]junk", "  [1]  ", "[1e39]",
    "[0x1.fffffep127]", "[+1]", "[.5]", "[5.]", "[1e]", "[1e+]", "[--1]", "[1,,2]", "[\u{00e9}]", "[1]\0",
];

const TOKENS: &[&str] = &[
    "[", "]", ",", " ", "\t", "\n", "-", "+", ".", "e", "E", "x", "0x", "p", "0", "1", "9", "123456789", "nan", "inf",
    "infinity", "1e38", "1e39", "1e-46", "3.4028235e38", "0x1p128", "\u{ff10}", "\u{00a0}", "\0", "\\", "'", "\"", "{",
];

fn generate(r: &mut Rng) -> String {
    match r.below(4) {
        // A well-formed vector of random numbers in many spellings.
        0 => {
            let long = r.below(50) == 0;
            let n = 1 + r.below(if long { 20_000 } else { 20 });
            let mut s = String::from("[");
            for i in 0..n {
                if i > 0 {
                    s.push_str(r.pick(&[",", " ,", ", ", ",\t"]));
                }
                let bits = r.next() as u32;
                let v = match r.below(3) {
                    0 => f32::from_bits(bits),
                    1 => (r.next() as i32 as f32) / 1000.0,
                    _ => (bits % 100) as f32,
                };
                s.push_str(&match r.below(3) {
                    0 => format!("{v}"),
                    1 => format!("{v:e}"),
                    _ => format!("{v:.3}"),
                });
            }
            s.push(']');
            s
        }
        // Random tokens.
        1 => (0..r.below(30)).map(|_| r.pick(TOKENS)).collect(),
        // Random bytes (lossily made UTF-8, as the server's text always is).
        2 => {
            let bytes: Vec<u8> = (0..r.below(40)).map(|_| r.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        // A seed.
        _ => r.pick(SEEDS).to_owned(),
    }
}

fn mutate(r: &mut Rng, s: &str) -> String {
    let mut b: Vec<char> = s.chars().collect();
    for _ in 0..1 + r.below(4) {
        let at = r.below(b.len() + 1);
        match r.below(5) {
            0 if !b.is_empty() => {
                b.remove(at.min(b.len() - 1));
            }
            1 => b.splice(at..at, r.pick(TOKENS).chars()).for_each(drop),
            2 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = char::from_u32(r.next() as u32 % 0x80).unwrap_or('?');
            }
            3 if b.len() > 2 => {
                // Duplicate a slice.
                let i = r.below(b.len());
                let j = (i + 1 + r.below(8)).min(b.len());
                let part: Vec<char> = b[i..j].to_vec();
                b.splice(i..i, part).for_each(drop);
            }
            _ => b.truncate(at),
        }
    }
    b.into_iter().collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let inputs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let mut r = Rng(seed | 1);
    let (mut accepted, mut rejected, mut panics, mut round_trip) = (0u64, 0u64, 0u64, 0u64);
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let mut last = String::from("[1,2,3]");
    for _ in 0..inputs {
        let input = if r.below(2) == 0 { generate(&mut r) } else { mutate(&mut r, &last) };
        let outcome = catch_unwind(AssertUnwindSafe(|| match parse_vector(&input) {
            Ok(values) => {
                let again = parse_vector(&format_vector(&values));
                let same = again.is_ok_and(|a| a.len() == values.len() && a.iter().zip(&values).all(|(x, y)| x.to_bits() == y.to_bits()));
                (true, same)
            }
            Err(e) => {
                let _ = (e.to_string(), e.detail());
                (false, true)
            }
        }));
        match outcome {
            Ok((ok, same)) => {
                if ok {
                    accepted += 1;
                } else {
                    rejected += 1;
                }
                if !same {
                    round_trip += 1;
                    eprintln!("round trip failed: {input:?}");
                }
            }
            Err(_) => {
                panics += 1;
                eprintln!("panic on {input:?}");
            }
        }
        if input.len() < 4096 {
            last = input;
        }
    }
    println!(
        "{{\"target\": \"vector text parser\", \"inputs\": {inputs}, \"accepted\": {accepted}, \"rejected\": {rejected}, \"panics\": {panics}, \"round_trip_failures\": {round_trip}, \"seconds\": {:.1}, \"seed\": {seed}}}",
        start.elapsed().as_secs_f64()
    );
    if panics > 0 || round_trip > 0 {
        std::process::exit(1);
    }
}
