//! The text form `[1,2.5,-3e-07]`, read and written exactly as pgvector does, so that
//! dumps, client adapters and eyes see the same thing from either extension.
//!
//! Reading follows C `strtof` on each element (leading whitespace, sign, decimal with
//! exponent, hexadecimal with binary exponent, `inf`/`infinity`/`nan`), correctly
//! rounded to float4. Writing uses the
//! shortest digits that read back to the same float4, in PostgreSQL's `float4out`
//! layout: fixed notation for decimal exponents -4..=5, else `d.ddde±XX`.

use super::{check_element, VectorError, MAX_DIM};

/// PostgreSQL's `scanner_isspace`, the whitespace pgvector accepts around elements.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn skip_spaces(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_space(s[i]) {
        i += 1;
    }
    i
}

/// Length of the longest prefix of `s` that `strtof` would consume as a number
/// (0 when there is none).
fn float_literal_len(s: &[u8]) -> usize {
    let mut i = 0;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        i += 1;
    }
    for word in ["infinity", "inf", "nan"] {
        let w = word.as_bytes();
        if s.len() >= i + w.len() && s[i..i + w.len()].eq_ignore_ascii_case(w) {
            return i + w.len();
        }
    }
    if let Some(len) = hex_literal_len(&s[i..]) {
        return i + len;
    }
    let int_start = i;
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < s.len() && s[i] == b'.' {
        let frac_start = i + 1;
        let mut j = frac_start;
        while j < s.len() && s[j].is_ascii_digit() {
            j += 1;
        }
        digits += j - frac_start;
        i = j;
    }
    if digits == 0 {
        return 0;
    }
    exponent_end(s, i, b'e')
}

/// Where a number ending at `i` ends once an exponent (`marker`, either case, an optional
/// sign, at least one digit) is taken: `i` itself when there is none.
fn exponent_end(s: &[u8], i: usize, marker: u8) -> usize {
    if i < s.len() && s[i].eq_ignore_ascii_case(&marker) {
        let mut j = i + 1;
        if j < s.len() && (s[j] == b'+' || s[j] == b'-') {
            j += 1;
        }
        let exp_start = j;
        while j < s.len() && s[j].is_ascii_digit() {
            j += 1;
        }
        if j > exp_start {
            return j;
        }
    }
    i
}

/// Length of a hexadecimal float at the start of `s` (after the sign): `0x`, hex digits
/// with an optional point, an optional `p` exponent; None when there is no hex digit
/// after the `0x` (then `strtof` reads the `0` alone).
fn hex_literal_len(s: &[u8]) -> Option<usize> {
    if s.len() < 3 || s[0] != b'0' || !(s[1] == b'x' || s[1] == b'X') {
        return None;
    }
    let mut i = 2;
    let mut digits = 0;
    while i < s.len() && s[i].is_ascii_hexdigit() {
        i += 1;
        digits += 1;
    }
    if i < s.len() && s[i] == b'.' {
        let mut j = i + 1;
        while j < s.len() && s[j].is_ascii_hexdigit() {
            j += 1;
            digits += 1;
        }
        if digits > 0 {
            i = j;
        }
    }
    if digits == 0 {
        return None;
    }
    Some(exponent_end(s, i, b'p'))
}

/// The float4 nearest (ties to even) to a hexadecimal literal that `hex_literal_len`
/// accepted, with its sign; infinite when it is beyond float4's range.
fn parse_hex_float(literal: &str) -> f32 {
    let b = literal.as_bytes();
    let negative = b[0] == b'-';
    let mut i = usize::from(b[0] == b'-' || b[0] == b'+') + 2;
    // value = mantissa * 2^exp2, with `sticky` for nonzero digits beyond 60 bits.
    let (mut mantissa, mut exp2, mut sticky, mut fraction) = (0u64, 0i64, false, false);
    while i < b.len() {
        let c = b[i];
        if c == b'.' {
            fraction = true;
        } else if let Some(d) = (c as char).to_digit(16) {
            if mantissa < 1 << 60 {
                mantissa = mantissa * 16 + u64::from(d);
                exp2 -= 4 * i64::from(fraction);
            } else {
                sticky |= d != 0;
                exp2 += 4 * i64::from(!fraction);
            }
        } else {
            break;
        }
        i += 1;
    }
    if i < b.len() {
        // the binary exponent, saturated far beyond float4's range
        let e: i64 = literal[i + 1..].trim_start_matches('+').parse::<i64>().unwrap_or_else(|_| {
            if literal[i + 1..].starts_with('-') {
                -100_000
            } else {
                100_000
            }
        });
        exp2 += e.clamp(-100_000, 100_000);
    }
    let magnitude = if mantissa == 0 {
        0.0
    } else {
        let msb = 63 - i64::from(mantissa.leading_zeros());
        let top = msb + exp2; // the value is in [2^top, 2^(top+1))
        if top > 127 {
            f32::INFINITY
        } else if top < -151 {
            0.0
        } else {
            // float4 keeps 24 significant bits, and no bit below 2^-149 (subnormals)
            let drop = (msb + 1 - 24).max(-149 - exp2);
            let kept = if drop >= 64 {
                0
            } else if drop > 0 {
                let dropped = mantissa & ((1u64 << drop) - 1);
                let half = 1u64 << (drop - 1);
                let mut kept = mantissa >> drop;
                if dropped > half || (dropped == half && (sticky || kept & 1 == 1)) {
                    kept += 1;
                }
                exp2 += drop;
                kept
            } else {
                mantissa
            };
            // exact in f64, and representable in f32 unless it overflowed to 2^128
            (kept as f64 * 2f64.powi(exp2 as i32)) as f32
        }
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// Parses the text form of a vector. Enforces the element and dimension rules but not a
/// typmod (see [`super::check_fits_typmod`]).
pub fn parse_vector(input: &str) -> Result<Vec<f32>, VectorError> {
    let syntax = |detail| VectorError::InvalidSyntax { input: input.to_owned(), detail };
    let s = input.as_bytes();
    let mut i = skip_spaces(s, 0);
    if i >= s.len() || s[i] != b'[' {
        return Err(syntax(Some("Vector contents must start with \"[\".")));
    }
    i = skip_spaces(s, i + 1);
    let mut values = Vec::new();
    // An empty list is an error whatever follows it, as in pgvector.
    if i < s.len() && s[i] == b']' {
        return Err(VectorError::Empty);
    }
    loop {
        if values.len() == MAX_DIM {
            return Err(VectorError::TooManyDims);
        }
        i = skip_spaces(s, i);
        let len = float_literal_len(&s[i..]);
        if len == 0 {
            return Err(syntax(None));
        }
        // The literal is ASCII by construction, so this slice is valid UTF-8.
        let literal = &input[i..i + len];
        let digits = literal.trim_start_matches(['+', '-']);
        let value: f32 = if digits.len() > 1 && digits.as_bytes()[1].eq_ignore_ascii_case(&b'x') {
            parse_hex_float(literal)
        } else {
            literal.parse().map_err(|_| syntax(None))?
        };
        if value.is_infinite() && !is_infinity_word(literal) {
            return Err(VectorError::OutOfRange { literal: literal.to_owned() });
        }
        check_element(value)?;
        values.push(value);
        i = skip_spaces(s, i + len);
        match s.get(i) {
            Some(b',') => i += 1,
            Some(b']') => {
                i += 1;
                break;
            }
            _ => return Err(syntax(None)),
        }
    }
    if skip_spaces(s, i) != s.len() {
        return Err(syntax(Some("Junk after closing right brace.")));
    }
    Ok(values)
}

fn is_infinity_word(literal: &str) -> bool {
    let l = literal.trim_start_matches(['+', '-']);
    l.eq_ignore_ascii_case("inf") || l.eq_ignore_ascii_case("infinity")
}

/// Appends one element in PostgreSQL's shortest float4 form (`1.5`, `1e-05`, `1.234567e+06`).
pub fn format_f32(value: f32, out: &mut String) {
    use std::fmt::Write;
    if value == 0.0 {
        out.push_str(if value.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    if !value.is_finite() {
        // Never stored in a vector; written like float4out for completeness.
        out.push_str(if value.is_nan() { "NaN" } else if value > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    let (digits, exp) = shortest_digits(value.abs());
    if value < 0.0 {
        out.push('-');
    }
    if (-4..6).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()).expect("writing to a String cannot fail");
    }
}

/// The significant digits and decimal exponent (scientific: `d.ddd × 10^exp`) that
/// PostgreSQL's float4out prints for a positive finite float4.
///
/// PostgreSQL runs Ryu built without `STRICTLY_SHORTEST`: it never prints a decimal that
/// lies exactly on the boundary between two floats (halfway to a neighbour), because a
/// reader that does not round half-to-even would take it to the neighbour. Upstream Ryu
/// (the `ryu` crate) does print it when the float's mantissa is even. So: take Ryu's
/// answer, and in that rare boundary case take the value correctly rounded to one more
/// digit (or more, while that lands on the boundary too), which is what PostgreSQL's Ryu finds.
fn shortest_digits(value: f32) -> (String, i32) {
    let mut buf = ryu::Buffer::new();
    let (mut digits, mut exp) = split_scientific(buf.format_finite(value));
    let mut precision = digits.len();
    // Nine significant digits always identify a float4, so this ends by precision 8.
    while lies_on_rounding_boundary(value, &digits, exp) && precision < 9 {
        (digits, exp) = split_scientific(&format!("{:.*e}", precision, f64::from(value)));
        precision += 1;
    }
    (digits, exp)
}

/// Splits `312985.12`, `4.0021158e8`, `1e-7` or `0.001` into significant digits
/// (no leading or trailing zeros) and the decimal exponent of the first digit.
fn split_scientific(text: &str) -> (String, i32) {
    let (mantissa, exp) = text.split_once(['e', 'E']).unwrap_or((text, "0"));
    let exp: i32 = exp.parse().expect("an integer exponent");
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int_part}{frac_part}");
    let leading_zeros = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_start_matches('0').trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    (digits.to_owned(), exp + int_part.len() as i32 - 1 - leading_zeros as i32)
}

/// Whether `digits × 10^exp` is exactly halfway between `value` and a neighbouring float4.
/// All quantities are exact in f64: a float4 and the midpoint of two adjacent float4s
/// need at most 26 significant bits.
fn lies_on_rounding_boundary(value: f32, digits: &str, exp: i32) -> bool {
    let decimal: f64 = format!("{digits}e{}", exp - (digits.len() as i32 - 1))
        .parse()
        .expect("digits and exponent form a number");
    let x = f64::from(value);
    if decimal == x {
        return false;
    }
    let below = f64::from(f32::from_bits(value.to_bits() - 1));
    let above = f32::from_bits(value.to_bits() + 1);
    let above = if above.is_finite() { f64::from(above) } else { x + (x - below) };
    decimal == (x + below) / 2.0 || decimal == (x + above) / 2.0
}

/// Writes a whole vector in text form.
pub fn format_vector(values: &[f32]) -> String {
    let mut out = String::with_capacity(2 + values.len() * 12);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        format_f32(*v, &mut out);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(v: f32) -> String {
        let mut s = String::new();
        format_f32(v, &mut s);
        s
    }

    #[test]
    fn formats_like_float4out() {
        // Expected strings are what PostgreSQL 18's float4out prints for these values.
        let cases: &[(f32, &str)] = &[
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e38, "1e+38"),
            (1.5e-45, "1e-45"),
            (-0.0, "-0"),
            (100.0, "100"),
            (1e6, "1e+06"),
            (999999.0, "999999"),
            (1.5, "1.5"),
            (3e20, "3e+20"),
            (1e-7, "1e-07"),
            (0.1, "0.1"),
            (123456789.0, "1.2345679e+08"),
            (1.23456789e-30, "1.2345679e-30"),
            (-2.5e-3, "-0.0025"),
            // where several shortest forms exist, Ryu's choice (checked against float4out)
            (f32::from_bits(0x4898d324), "312985.12"),
            (f32::from_bits(0xcdbed5f4), "-4.0021158e+08"),
            (f32::from_bits(0x518fb1e4), "7.7145604e+10"),
        ];
        for (v, want) in cases {
            assert_eq!(fmt(*v), *want, "formatting {v:e}");
        }
    }

    #[test]
    fn text_round_trips_random_bit_patterns() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..200_000 {
            let v = f32::from_bits(rng.random());
            if !v.is_finite() {
                continue;
            }
            let text = fmt(v);
            let back = parse_vector(&format!("[{text}]")).unwrap();
            assert_eq!(back[0].to_bits(), v.to_bits(), "{text}");
        }
    }

    #[test]
    fn parses_with_spaces_and_exponents() {
        assert_eq!(parse_vector(" [ 1 , 2 ] ").unwrap(), vec![1.0, 2.0]);
        assert_eq!(parse_vector("[1.5,-2e3,+.5,5.,1E-2]").unwrap(), vec![1.5, -2000.0, 0.5, 5.0, 0.01]);
        assert_eq!(parse_vector("[1e-50]").unwrap(), vec![0.0]);
        assert_eq!(parse_vector("[\t1\n]").unwrap(), vec![1.0]);
    }

    #[test]
    fn reads_hexadecimal_floats_like_strtof() {
        let one = |s: &str| parse_vector(&format!("[{s}]")).map(|v| v[0]);
        assert_eq!(one("0x10"), Ok(16.0));
        assert_eq!(one("0x1p3"), Ok(8.0));
        assert_eq!(one("-0X1.8P-1"), Ok(-0.75));
        assert_eq!(one("+0x.8"), Ok(0.5));
        assert_eq!(one("0x1p-149"), Ok(f32::from_bits(1)));
        assert_eq!(one("0x1p-151"), Ok(0.0));
        assert_eq!(one("0x1.8p-151"), Ok(0.0));
        assert_eq!(one("0x1p-150"), Ok(0.0));
        assert_eq!(one("0x1.8p-150"), Ok(f32::from_bits(1)));
        assert_eq!(one("0x1.8p-149"), Ok(f32::from_bits(2)));
        assert_eq!(one("0x1.fffffep127"), Ok(f32::MAX));
        assert_eq!(one("0x1p1"), Ok(2.0));
        assert!(matches!(one("0x1p128"), Err(VectorError::OutOfRange { .. })));
        assert!(matches!(one("0x1p99999999999999999999"), Err(VectorError::OutOfRange { .. })));
        // rounding: 1 + 2^-24 is a tie (to even: 1), a hair above rounds up
        assert_eq!(one("0x1.000001"), Ok(1.0));
        assert_eq!(one("0x1.0000010000000000000000001"), Ok(1.0 + f32::EPSILON));
        assert_eq!(one("0x1.000003"), Ok(1.0 + 2.0 * f32::EPSILON));
        // each float4, written in hex, reads back to itself
        let mut x = 0x1234_5678u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x & 0x7fff_ffff);
            if !f.is_finite() {
                continue;
            }
            let (m, e) = if f.to_bits() >> 23 == 0 { (f.to_bits() & 0x7f_ffff, -149) } else { ((f.to_bits() & 0x7f_ffff) | 0x80_0000, (f.to_bits() >> 23) as i32 - 150) };
            assert_eq!(one(&format!("0x{m:x}p{e}")), Ok(f), "{m:x}p{e}");
        }
    }

    #[test]
    fn rejects_bad_text() {
        let syntax = |s: &str| matches!(parse_vector(s), Err(VectorError::InvalidSyntax { .. }));
        for bad in ["", "1,2", "[1,2,]", "[1 2]", "[,1]", "[1", "[1]x", "[a]", "[1,,2]", "[0x]", "[0x.p1]", "[0xg]", "[[1]]", "[1e]x"] {
            assert!(syntax(bad), "{bad:?} should be a syntax error, got {:?}", parse_vector(bad));
        }
        assert_eq!(parse_vector("[1]x").unwrap_err().detail(), Some("Junk after closing right brace."));
        assert_eq!(parse_vector("1").unwrap_err().detail(), Some("Vector contents must start with \"[\"."));
        assert_eq!(parse_vector("[]"), Err(VectorError::Empty));
        assert_eq!(parse_vector(" [ ] "), Err(VectorError::Empty));
        assert_eq!(parse_vector("[]x"), Err(VectorError::Empty));
        let too_many_then_nan = format!("[{},NaN]", vec!["1"; MAX_DIM].join(","));
        assert_eq!(parse_vector(&too_many_then_nan), Err(VectorError::TooManyDims));
        assert_eq!(parse_vector("[NaN]"), Err(VectorError::NaN));
        assert_eq!(parse_vector("[-inf]"), Err(VectorError::Infinite));
        assert_eq!(parse_vector("[Infinity]"), Err(VectorError::Infinite));
        assert_eq!(parse_vector("[1e39]"), Err(VectorError::OutOfRange { literal: "1e39".into() }));
        let too_many = format!("[{}]", vec!["1"; MAX_DIM + 1].join(","));
        assert_eq!(parse_vector(&too_many), Err(VectorError::TooManyDims));
        let just_enough = format!("[{}]", vec!["1"; MAX_DIM].join(","));
        assert_eq!(parse_vector(&just_enough).unwrap().len(), MAX_DIM);
    }
}
