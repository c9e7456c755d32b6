use super::*;

fn kinds(text: &str) -> Vec<(PiiKind, String)> {
    scan(text)
        .into_iter()
        .map(|f| (f.kind, text[f.range].to_string()))
        .collect()
}

fn found(kind: PiiKind, text: &str, expect: &str) {
    let got = kinds(text);
    assert_eq!(
        got,
        vec![(kind, expect.to_string())],
        "in {text:?}: expected {kind:?} {expect:?}"
    );
}

fn none(text: &str) {
    assert_eq!(kinds(text), vec![], "false positive in {text:?}");
}

#[test]
fn emails() {
    found(
        PiiKind::Email,
        "mail ada.lovelace+ml@math.example.co.uk now",
        "ada.lovelace+ml@math.example.co.uk",
    );
    found(
        PiiKind::Email,
        "<j_doe-1@mail-server.org>",
        "j_doe-1@mail-server.org",
    );
    none("icon@2x.png and @username and a@b and foo@localhost");
    none("npm i left-pad@1.3.0; user@@x.com; .x@y");
}

#[test]
fn phones() {
    for p in [
        "+1 415 555 0132",
        "+44 20 7946 0958",
        "+49 (30) 1234 5678",
        "+33 1 23 45 67 89",
        "+81-3-1234-5678",
        "+14155550132",
        "(415) 555-0132",
        "415-555-0132",
        "415.555.0132",
        "1-800-555-0199",
    ] {
        found(PiiKind::Phone, &format!("call {p} today"), p);
    }
    none("x = a+12345678; 1+2+3 = 6; version 2.10.1");
    none("+5 HP, +12 ms, 2021-03-04, 10:45:00, 555-0132, 415-555-013, 415-555.0132");
    none("years +999999-12-31 23:59:59, +10000-01-01, +9999-365 23, +19370-01-01");
    none("id 1415-555-0132-7 and 123.456.7890.1");
}

#[test]
fn ip_addresses() {
    found(
        PiiKind::IpAddress,
        "from 81.2.69.160 at noon",
        "81.2.69.160",
    );
    found(
        PiiKind::IpAddress,
        "host 2a00:1450:4001:82b::200e up",
        "2a00:1450:4001:82b::200e",
    );
    none("localhost 127.0.0.1, lan 192.168.1.20, 10.0.0.7, 0.0.0.0, 255.255.255.255");
    none("docs 192.0.2.44 and 2001:db8::1, link fe80::1, ::1, std::io::Read, a::b::c");
    none("version 1.2.3.4, v3.10.12.1, 1.2.3.4.5, 300.1.1.1, 12:30:45, 01.02.03.04");
    none("OIDs id-ce 2.5.29.15 and 1.3.101.112, 4.2.1.13");
}

#[test]
fn cards() {
    for c in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",
        "3400 000000 00009",
        "6011 0000 0000 0004",
    ] {
        found(PiiKind::CreditCard, &format!("card: {c}."), c);
    }
    found(
        PiiKind::CreditCard,
        "Visa card no. 4111111111111111",
        "4111111111111111",
    );
    none("let seed = 4111111111111111;"); // bare digits without a card word
    none("4111 1111 1111 1112"); // Luhn fails
    none("1234567890123452, 9999999999999995"); // no network starts so
    none("4111 11 1111 1111 11"); // irregular groups
    none("card ts 1700000000000 and 4111111111111111111111"); // prefix, too long
}

#[test]
fn ssns() {
    found(PiiKind::Ssn, "SSN 123-45-6789.", "123-45-6789");
    none("000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000");
    none("part 1-123-45-6789 and 123-45-6789-0 and 2021-03-04");
}

#[test]
fn secrets() {
    // Built at run time so the sources hold no key-shaped literal.
    let aws = format!("{}{}", "AKIA", "Z7Q2M4X9K1B3N8V6");
    found(PiiKind::Secret, &format!("key={aws} ok"), &aws);
    let gh = format!("{}_{}", "ghp", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8");
    found(PiiKind::Secret, &format!("token {gh}"), &gh);
    let assigned = "api_key = \"q8Zr2Lm0Xv7Tn4Wc1Yb9\"";
    found(PiiKind::Secret, assigned, "q8Zr2Lm0Xv7Tn4Wc1Yb9");
    none("api_key = \"YOUR_API_KEY_HERE_1234\"; password: \"/usr/local/share/x1\"");
    none("let token = tokenizer.encode(text); password = \"aaaaaaaaaaaaaaaaaaaa1\"");
    let pem = format!(
        "before\n-----BEGIN {kind}-----\nMIIEowIBAAKCAQEA7x\nq9f0=\n-----END {kind}-----\nafter",
        kind = "RSA PRIVATE KEY"
    );
    let f = scan(&pem);
    assert_eq!(f.len(), 1);
    assert_eq!(redact(&pem, &f), "before\n<SECRET>\nafter");
    let cut = format!(
        "x\n-----BEGIN {}-----\nMIIEowIBAAKCAQEA7xq9f0MIIEowIBAAKCAQEA7xq9f0Ab\nq9f0=\n",
        "PRIVATE KEY"
    );
    assert_eq!(redact(&cut, &scan(&cut)), "x\n<SECRET>\n");
    none("if line.starts_with(\"-----BEGIN PRIVATE KEY-----\") {");
}

#[test]
fn classes_overlaps_and_redaction() {
    let text = "ada@example.org; 123-45-6789; +1 415 555 0132; 4111 1111 1111 1111";
    let f = scan(text);
    let c = count_classes(&f);
    assert_eq!((c.personal, c.sensitive), (2, 2));
    assert_eq!(redact(text, &f), "<EMAIL>; <SSN>; <PHONE>; <CREDIT_CARD>");
    // A card number is not also reported as a phone number inside it.
    assert_eq!(kinds("+ 4111 1111 1111 1111").len(), 1);
    for k in PiiKind::ALL {
        assert!(k.placeholder().starts_with('<') && !k.name().is_empty());
    }
}

#[test]
fn prose_and_code_do_not_trip_it() {
    none("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer");
    none("fn main() { let x: u64 = 0x9E37_79B9_7F4A_7C15; println!(\"{x:?} {}\", 1e-9); }");
    none(
        "See section 4.2.1 (pp. 123-145), ISBN 978-3-16-148410-0, doi:10.1000/182, 3.14159265358979",
    );
    none("#[derive(Debug)] struct A; impl std::fmt::Display for A {} // TODO(@alice)");
}
