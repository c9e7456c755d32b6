//! The reader on hand-encoded modules: loop multiplicities through nested
//! loops, fusions and several call sites, and lower bounds for loops whose
//! trip count nothing states.

use super::loops::known_trip_count;
use super::*;

fn key(out: &mut Vec<u8>, n: u64, wire: u64) {
    put_varint(out, n << 3 | wire);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn int(out: &mut Vec<u8>, n: u64, v: i64) {
    key(out, n, 0);
    put_varint(out, v as u64);
}

fn bytes(out: &mut Vec<u8>, n: u64, b: &[u8]) {
    key(out, n, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A scalar s32 shape.
fn s32() -> Vec<u8> {
    let mut s = Vec::new();
    int(&mut s, 2, 4);
    s
}

/// An f32 vector shape.
fn f32s(n: i64) -> Vec<u8> {
    let mut s = Vec::new();
    int(&mut s, 2, 11);
    int(&mut s, 3, n);
    s
}

#[derive(Default)]
struct Inst {
    id: i64,
    opcode: &'static str,
    shape: Vec<u8>,
    operands: Vec<i64>,
    called: Vec<i64>,
    config: &'static str,
    literal: Option<i64>,
    parameter: i64,
    index: i64,
    direction: &'static str,
}

fn inst(id: i64, opcode: &'static str, operands: &[i64]) -> Inst {
    Inst {
        id,
        opcode,
        shape: s32(),
        operands: operands.to_vec(),
        ..Inst::default()
    }
}

fn encode_inst(i: &Inst) -> Vec<u8> {
    let mut b = Vec::new();
    bytes(&mut b, 1, format!("{}.{}", i.opcode, i.id).as_bytes());
    bytes(&mut b, 2, i.opcode.as_bytes());
    bytes(&mut b, 3, &i.shape);
    if let Some(v) = i.literal {
        let mut lit = Vec::new();
        bytes(&mut lit, 1, &s32());
        int(&mut lit, 4, v);
        bytes(&mut b, 8, &lit);
    }
    int(&mut b, 9, i.parameter);
    int(&mut b, 13, i.index);
    int(&mut b, 35, i.id);
    let mut packed = Vec::new();
    for &o in &i.operands {
        put_varint(&mut packed, o as u64);
    }
    bytes(&mut b, 36, &packed);
    // called_computation_ids unpacked, as some writers do
    for &c in &i.called {
        int(&mut b, 38, c);
    }
    if !i.config.is_empty() {
        bytes(&mut b, 43, i.config.as_bytes());
    }
    if !i.direction.is_empty() {
        bytes(&mut b, 63, i.direction.as_bytes());
    }
    b
}

fn comp(id: i64, name: &str, insts: &[Inst]) -> Vec<u8> {
    let mut b = Vec::new();
    bytes(&mut b, 1, name.as_bytes());
    for i in insts {
        bytes(&mut b, 2, &encode_inst(i));
    }
    int(&mut b, 5, id);
    int(&mut b, 6, insts.last().unwrap().id);
    b
}

fn module(entry: &str, comps: &[Vec<u8>]) -> Vec<u8> {
    let mut m = Vec::new();
    bytes(&mut m, 1, b"test");
    bytes(&mut m, 2, entry.as_bytes());
    for c in comps {
        bytes(&mut m, 3, c);
    }
    let mut with_config = Vec::new();
    bytes(&mut with_config, 1, &m);
    with_config
}

/// `i < limit` on element 0 of the loop state.
fn condition(id: i64, name: &str, limit: i64) -> Vec<u8> {
    comp(
        id,
        name,
        &[
            inst(1, "parameter", &[]),
            Inst {
                index: 0,
                ..inst(2, "get-tuple-element", &[1])
            },
            Inst {
                literal: Some(limit),
                ..inst(3, "constant", &[])
            },
            Inst {
                direction: "LT",
                ..inst(4, "compare", &[2, 3])
            },
        ],
    )
}

/// A loop body: `(i + step, all-gather(x))` on state `(i, x)`, plus whatever
/// `extra` instructions (ids from 10).
fn body(id: i64, name: &str, step: i64, extra: Vec<Inst>) -> Vec<u8> {
    let mut insts = vec![
        inst(1, "parameter", &[]),
        inst(2, "get-tuple-element", &[1]),
        Inst {
            literal: Some(step),
            ..inst(3, "constant", &[])
        },
        inst(4, "add", &[2, 3]),
        Inst {
            index: 1,
            shape: f32s(4),
            ..inst(5, "get-tuple-element", &[1])
        },
        Inst {
            shape: f32s(32),
            ..inst(6, "all-gather", &[5])
        },
    ];
    insts.extend(extra);
    insts.push(inst(99, "tuple", &[4, 6]));
    comp(id, name, &insts)
}

fn executions(s: &HloSummary, computation: &str, opcode: &str) -> (u64, bool) {
    let i = s
        .instructions
        .iter()
        .find(|i| i.computation == computation && i.opcode == opcode)
        .unwrap_or_else(|| panic!("no {opcode} in {computation}"));
    (i.executions, i.executions_lower_bound)
}

/// An entry `(0, x)` -> while(cond, body) with the given backend config.
fn entry_while(id: i64, body: i64, cond: i64, init: i64, config: &'static str) -> Vec<u8> {
    comp(
        id,
        "main",
        &[
            Inst {
                literal: Some(init),
                ..inst(1, "constant", &[])
            },
            Inst {
                shape: f32s(4),
                ..inst(2, "parameter", &[])
            },
            inst(3, "tuple", &[1, 2]),
            Inst {
                called: vec![body, cond],
                config,
                ..inst(4, "while", &[3])
            },
        ],
    )
}

#[test]
fn nested_loops_multiply_and_fusions_inherit() {
    // main: while (annotated 28) { all-gather; fusion; while (i = 0; i < 4;
    // i += 1) { all-gather } }
    let inner_body = body(1, "inner_body", 1, vec![]);
    let inner_cond = condition(2, "inner_cond", 4);
    let fused = comp(
        3,
        "fused",
        &[inst(1, "parameter", &[]), inst(2, "negate", &[1])],
    );
    let outer_body = body(
        4,
        "outer_body",
        1,
        vec![
            Inst {
                called: vec![3],
                ..inst(10, "fusion", &[2])
            },
            Inst {
                literal: Some(0),
                ..inst(11, "constant", &[])
            },
            inst(12, "tuple", &[11, 5]),
            Inst {
                called: vec![1, 2],
                ..inst(13, "while", &[12])
            },
        ],
    );
    let outer_cond = condition(5, "outer_cond", 1000);
    let main = entry_while(6, 4, 5, 0, r#"{"known_trip_count":{"n":"28"}}"#);
    let bytes = module(
        "main",
        &[inner_body, inner_cond, fused, outer_body, outer_cond, main],
    );
    let s = parse_module(&bytes, true).unwrap();
    assert_eq!(executions(&s, "main", "while"), (1, false));
    assert_eq!(executions(&s, "outer_body", "all-gather"), (28, false));
    assert_eq!(executions(&s, "fused", "negate"), (28, false));
    assert_eq!(executions(&s, "inner_body", "all-gather"), (28 * 4, false));
    assert_eq!(executions(&s, "inner_cond", "compare"), (28 * 5, false));
    assert_eq!(executions(&s, "outer_cond", "compare"), (29, false));
    let trips: Vec<_> = s
        .instructions
        .iter()
        .filter(|i| i.opcode == "while")
        .map(|i| (i.computation.as_str(), i.trip_count))
        .collect();
    assert_eq!(trips, [("outer_body", Some(4)), ("main", Some(28))]);
    let c = s
        .computations
        .iter()
        .find(|c| c.name == "inner_body")
        .unwrap();
    assert_eq!((c.id, c.executions), (1, 112));
}

#[test]
fn trip_count_from_condition_init_and_step() {
    // for (i = 2; i < 11; i += 3): 2, 5, 8 -> 3 iterations, no annotation.
    let bytes = module(
        "main",
        &[
            body(1, "b", 3, vec![]),
            condition(2, "c", 11),
            entry_while(3, 1, 2, 2, ""),
        ],
    );
    let s = parse_module(&bytes, true).unwrap();
    assert_eq!(executions(&s, "b", "all-gather"), (3, false));
    // An annotation wins over the pattern.
    let bytes = module(
        "main",
        &[
            body(1, "b", 3, vec![]),
            condition(2, "c", 11),
            entry_while(3, 1, 2, 2, r#"{"known_trip_count": {"n": 5}}"#),
        ],
    );
    assert_eq!(
        executions(&parse_module(&bytes, true).unwrap(), "b", "all-gather"),
        (5, false)
    );
}

#[test]
fn unknown_trip_count_counts_once_as_a_lower_bound() {
    // The condition compares against a loop-state element, not a constant.
    let cond = comp(
        2,
        "c",
        &[
            inst(1, "parameter", &[]),
            inst(2, "get-tuple-element", &[1]),
            Inst {
                index: 1,
                ..inst(3, "get-tuple-element", &[1])
            },
            Inst {
                direction: "LT",
                ..inst(4, "compare", &[2, 3])
            },
        ],
    );
    let bytes = module(
        "main",
        &[body(1, "b", 1, vec![]), cond, entry_while(3, 1, 2, 0, "")],
    );
    let s = parse_module(&bytes, true).unwrap();
    assert_eq!(executions(&s, "b", "all-gather"), (1, true));
    assert_eq!(executions(&s, "main", "while"), (1, false));
    assert!(
        s.instructions
            .iter()
            .any(|i| i.opcode == "while" && i.trip_count.is_none())
    );
}

#[test]
fn a_computation_called_from_two_sites_sums_and_unreached_ones_run_never() {
    let callee = comp(
        1,
        "callee",
        &[
            inst(1, "parameter", &[]),
            Inst {
                shape: f32s(8),
                ..inst(2, "all-reduce", &[1])
            },
        ],
    );
    let dead = comp(2, "dead", &[inst(1, "all-reduce", &[])]);
    let main = comp(
        3,
        "main",
        &[
            inst(1, "parameter", &[]),
            Inst {
                called: vec![1],
                ..inst(2, "call", &[1])
            },
            Inst {
                called: vec![1],
                ..inst(3, "call", &[2])
            },
        ],
    );
    let s = parse_module(&module("main", &[callee, dead, main]), true).unwrap();
    assert_eq!(executions(&s, "callee", "all-reduce"), (2, false));
    assert_eq!(executions(&s, "dead", "all-reduce"), (0, false));
}

#[test]
fn known_trip_count_reads_xla_json() {
    assert_eq!(
        known_trip_count(br#"{"known_trip_count":{"n":"28"}}"#),
        Some(28)
    );
    assert_eq!(
        known_trip_count(
            br#"{"known_trip_count":{"n":"3"},"known_init_step":{"init":"0","step":"1"}}"#
        ),
        Some(3)
    );
    assert_eq!(
        known_trip_count(br#"{ "known_trip_count" : { "n" : 7 } }"#),
        Some(7)
    );
    assert_eq!(known_trip_count(b""), None);
    assert_eq!(
        known_trip_count(br#"{"known_init_step":{"init":"0"}}"#),
        None
    );
    assert_eq!(known_trip_count(b"\xff\x00"), None);
}
