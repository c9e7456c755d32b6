//! The checks a pattern's match must pass to be reported: what keeps precision high.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

fn before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

/// The match continues a longer token: a letter or digit touches it, or a separator followed
/// (or preceded) by a digit, as in `1.2.3.4.5` or `123-45-6789-0`.
fn glued(text: &str, r: &Range<usize>, seps: &[char]) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    if before(text, r.start).is_some_and(word) || after(text, r.end).is_some_and(word) {
        return true;
    }
    let b = before(text, r.start);
    if b.is_some_and(|c| seps.contains(&c)) {
        let at = r.start - b.map_or(0, char::len_utf8);
        if before(text, at).is_some_and(|c| c.is_ascii_digit()) {
            return true;
        }
    }
    let a = after(text, r.end);
    if a.is_some_and(|c| seps.contains(&c)) {
        let at = r.end + a.map_or(0, char::len_utf8);
        if after(text, at).is_some_and(|c| c.is_ascii_digit()) {
            return true;
        }
    }
    false
}

/// Shannon entropy in bits per byte.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn has_digit_and_letter(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Keys of known shapes: random-looking (a digit, a letter, and varied characters).
pub(super) fn key_shape(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    has_digit_and_letter(s) && entropy(s) >= 3.0
}

/// `api_key = "…"` and friends: the value must look random, not like a placeholder or path.
pub(super) fn assigned_secret(text: &str, r: Range<usize>) -> bool {
    let v = &text[r];
    let lower = v.to_ascii_lowercase();
    const PLACEHOLDERS: [&str; 14] = [
        "xxxx",
        "your",
        "example",
        "sample",
        "placeholder",
        "changeme",
        "redacted",
        "dummy",
        "<",
        ">",
        "${",
        "{{",
        "***",
        "...",
    ];
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) || v.starts_with('/') || v.contains("://") {
        return false;
    }
    has_digit_and_letter(v) && entropy(v) >= 3.5
}

/// Email addresses: a sane local part and domain, and not an image name like `icon@2x.png`.
pub(super) fn email(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    if local.is_empty()
        || local.len() > 64
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || domain.len() > 253
    {
        return false;
    }
    if domain
        .split('.')
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        return false;
    }
    let tld = domain.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    const FILE_EXTENSIONS: [&str; 12] = [
        "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "css", "js", "json", "html",
    ];
    !FILE_EXTENSIONS.contains(&tld.as_str())
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether a card network issues numbers with this prefix and length.
fn card_prefix(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| -> u32 {
        std::str::from_utf8(&d[..k])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19),            // Visa
        b'5' if (51..=55).contains(&p(2)) => n == 16, // Mastercard
        b'5' => matches!(p(2), 50 | 56..=58) && (13..=19).contains(&n), // Maestro
        b'2' => (2221..=2720).contains(&p(4)) && n == 16, // Mastercard
        b'3' if matches!(p(2), 34 | 37) => n == 15,   // Amex
        b'3' if (3528..=3589).contains(&p(4)) => (16..=19).contains(&n), // JCB
        b'3' => {
            (matches!(p(2), 36 | 38 | 39) || (300..=305).contains(&p(3))) && (14..=19).contains(&n)
        } // Diners
        b'6' => (16..=19).contains(&n),               // Discover, UnionPay, Maestro
        _ => false,
    }
}

/// The (at most) `n` bytes of `text` before `at`, cut at a character boundary.
fn window_before(text: &str, at: usize, n: usize) -> &str {
    let mut from = at.saturating_sub(n);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..at]
}

/// Whether a word that announces a card number is in the 48 bytes before `at`.
fn card_context(text: &str, at: usize) -> bool {
    let lead = window_before(text, at, 48).to_ascii_lowercase();
    const WORDS: [&str; 10] = [
        "card",
        "visa",
        "mastercard",
        "amex",
        "discover",
        "credit",
        "debit",
        "payment",
        "cc#",
        "ccn",
    ];
    WORDS.iter().any(|w| lead.contains(w))
}

/// Card numbers: network prefix and length, Luhn digit, and regular groups of digits (4-4-4-4,
/// Amex 4-6-5), or a bare run of digits right after a word like "card" or "visa".
pub(super) fn card(text: &str, r: Range<usize>) -> bool {
    if before(text, r.start) == Some('+') || glued(text, &r, &['.', '-', ',']) {
        return false;
    }
    let s = &text[r.clone()];
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let seps: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if seps.is_empty() && !card_context(text, r.start) {
        // A bare run of digits is as likely a constant in code (u64 seeds, float tables) as a
        // card: only with a card word just before it.
        return false;
    }
    if !seps.is_empty() {
        if seps.iter().any(|&c| c != seps[0]) {
            return false;
        }
        let groups: Vec<usize> = s.split(seps[0] as char).map(str::len).collect();
        let fours = groups[..groups.len() - 1].iter().all(|&g| g == 4)
            // invariant: split() yields at least one piece.
            && (1..=4).contains(groups.last().expect("one group at least"));
        if !(fours || groups == [4, 6, 5] || groups == [4, 6, 4]) {
            return false;
        }
    }
    card_prefix(&digits) && luhn(&digits)
}

/// US social security numbers: valid area (not 000, 666, 900–999), group and serial.
pub(super) fn ssn(text: &str, r: Range<usize>) -> bool {
    if glued(text, &r, &['-', '.', '/']) {
        return false;
    }
    let s = &text[r];
    let area: u32 = s[0..3].parse().unwrap_or(0);
    let group: u32 = s[4..6].parse().unwrap_or(0);
    let serial: u32 = s[7..11].parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn digit_count(s: &str) -> usize {
    s.bytes().filter(u8::is_ascii_digit).count()
}

/// `+CC …`: 8–15 digits (E.164), standing alone, and not a signed ISO date such as
/// `+10000-01-01` or `+9999-365`.
pub(super) fn phone_international(text: &str, r: Range<usize>) -> bool {
    if before(text, r.start).is_some_and(|c| c.is_alphanumeric() || c == '+' || c == '_')
        || glued(text, &(r.start + 1..r.end), &['.', '-', ' ', ':', '/'])
    {
        return false;
    }
    let s = &text[r];
    let groups: Vec<&str> = s[1..].split(['-', ' ', '.']).collect();
    let date = groups.len() >= 2
        && groups[0].len() >= 4
        && groups[1].len() >= 2
        && groups[1].bytes().all(|b| b.is_ascii_digit())
        && s.as_bytes()[1 + groups[0].len()] == b'-';
    !date && (8..=15).contains(&digit_count(s))
}

/// NANP numbers: one separator kind between the groups, standing alone.
pub(super) fn phone_nanp(text: &str, r: Range<usize>) -> bool {
    if glued(text, &r, &['.', '-', '/']) || before(text, r.start) == Some('+') {
        return false;
    }
    // `ddd-ddd-dddd` (possibly after `1-`): both separators alike; `(ddd) ddd-dddd` has one.
    let s = text[r].as_bytes();
    s.contains(&b'(') || s[s.len() - 12 + 3] == s[s.len() - 12 + 7]
}

/// Public IPv4 addresses: octets ≤ 255 without leading zeros, not part of a longer dotted
/// number or a version (`v1.2.3.4`), not private or reserved, first octet 11 or more.
pub(super) fn ipv4(text: &str, r: Range<usize>) -> bool {
    if glued(text, &r, &['.']) {
        return false;
    }
    let s = &text[r.clone()];
    let mut octets = [0u8; 4];
    for (i, part) in s.split('.').enumerate() {
        if part.len() > 1 && part.starts_with('0') {
            return false;
        }
        match part.parse::<u8>() {
            Ok(v) => octets[i] = v,
            Err(_) => return false,
        }
    }
    // 1.0.0.0–9.255.255.255 are left out: object identifiers and versions (2.5.29.15,
    // 4.2.1.13, 7.3.17.1) look the same, and few people's addresses are there.
    if octets[0] < 10 {
        return false;
    }
    let lead = window_before(text, r.start, 12).to_ascii_lowercase();
    let lead = lead.trim_end();
    if lead.ends_with("version") || lead.ends_with("ver.") || lead.ends_with('v') {
        return false;
    }
    let ip = Ipv4Addr::from(octets);
    let [a, b, ..] = octets;
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && octets[2] == 0)
        || (a == 198 && (18..20).contains(&b)))
}

/// Global unicast IPv6 addresses (2000::/3, written with a full first group), standing alone.
pub(super) fn ipv6(text: &str, r: Range<usize>) -> bool {
    let edge = |c: char| c.is_alphanumeric() || matches!(c, ':' | '.' | '_');
    if before(text, r.start).is_some_and(edge) || after(text, r.end).is_some_and(edge) {
        return false;
    }
    let s = &text[r];
    let first = s.split(':').next().unwrap_or("");
    if first.len() != 4 || !matches!(first.as_bytes()[0], b'2' | b'3') {
        return false;
    }
    if s.split(':').filter(|g| !g.is_empty()).count() < 3 {
        return false;
    }
    match s.parse::<Ipv6Addr>() {
        // 2001:db8::/32 is for documentation.
        Ok(ip) => ip.segments()[..2] != [0x2001, 0x0db8],
        Err(_) => false,
    }
}
