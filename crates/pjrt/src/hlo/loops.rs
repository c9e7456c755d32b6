//! How many times each computation runs per execution of a module: `while`
//! trip counts multiplied down the call graph.
//!
//! A loop's trip count comes from XLA's own annotation when present (the
//! while instruction's `backend_config`, `xla.WhileLoopBackendConfig`
//! serialized as JSON: `{"known_trip_count":{"n":"28"}}`), else from the
//! usual counted-loop shape: the condition compares one element of the loop
//! state against a constant, the body adds a constant to that element, and
//! the loop's initial tuple sets it to a constant. A loop neither gives is
//! counted once and everything inside it is marked a lower bound.

use std::collections::HashMap;

use super::{RawComp, RawInst};

/// Per computation (module order): runs and whether that is a lower bound;
/// and the trip count of each `(computation id, instruction id)` while.
pub(crate) struct Executions {
    pub(crate) computations: Vec<(u64, bool)>,
    pub(crate) trip_counts: HashMap<(i64, i64), u64>,
}

/// Walks the call graph from `entry` in topological order, so that every
/// caller's count is final before its callees receive it.
pub(crate) fn executions(comps: &[RawComp<'_>], entry: Option<usize>) -> Executions {
    let index: HashMap<i64, usize> = comps.iter().enumerate().map(|(k, c)| (c.id, k)).collect();
    let mut trip_counts = HashMap::new();
    // (caller, callee, factor, factor unknown)
    let mut edges: Vec<(usize, usize, u64, bool)> = Vec::new();
    for (k, c) in comps.iter().enumerate() {
        for inst in &c.insts {
            // async-update/-done name the wrapped computation that
            // async-start already runs.
            if inst.opcode == "async-update" || inst.opcode == "async-done" {
                continue;
            }
            let trip = if inst.opcode == "while" {
                let t = trip_count(comps, &index, k, inst);
                if let Some(t) = t {
                    trip_counts.insert((c.id, inst.id), t);
                }
                Some(t)
            } else {
                None
            };
            for (j, callee) in inst.called.iter().enumerate() {
                let Some(&to) = index.get(callee) else {
                    continue;
                };
                let (factor, unknown) = match trip {
                    // body runs n times, the condition n + 1
                    Some(Some(n)) => (if j == 0 { n } else { n + 1 }, false),
                    Some(None) => (1, true),
                    None => (1, false),
                };
                edges.push((k, to, factor, unknown));
            }
        }
    }
    let mut indegree = vec![0usize; comps.len()];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); comps.len()];
    for (e, &(from, to, ..)) in edges.iter().enumerate() {
        indegree[to] += 1;
        out[from].push(e);
    }
    let mut counts = vec![(0u64, false); comps.len()];
    if let Some(e) = entry {
        counts[e].0 = 1;
    }
    let mut ready: Vec<usize> = (0..comps.len()).filter(|&k| indegree[k] == 0).collect();
    while let Some(k) = ready.pop() {
        let (runs, lower) = counts[k];
        for &e in &out[k] {
            let (_, to, factor, unknown) = edges[e];
            if runs > 0 {
                counts[to].0 = counts[to].0.saturating_add(runs.saturating_mul(factor));
                counts[to].1 |= lower || unknown;
            }
            indegree[to] -= 1;
            if indegree[to] == 0 {
                ready.push(to);
            }
        }
    }
    Executions {
        computations: counts,
        trip_counts,
    }
}

/// The trip count of the while `inst` in computation `caller`.
fn trip_count(
    comps: &[RawComp<'_>],
    index: &HashMap<i64, usize>,
    caller: usize,
    inst: &RawInst<'_>,
) -> Option<u64> {
    if let Some(n) = known_trip_count(inst.backend_config) {
        return Some(n);
    }
    let body = *index.get(inst.called.first()?)?;
    let cond = *index.get(inst.called.get(1)?)?;
    let g = Graph { comps, index };
    let (dir, k, limit) = match g.compare(cond, root(&comps[cond])?, &[], 0)? {
        (d, Sym::Elem(k), Sym::Const(n)) => (d, k, n),
        (d, Sym::Const(n), Sym::Elem(k)) => (flip(&d)?, k, n),
        _ => return None,
    };
    let init = match g.element(caller, *inst.operands.first()?, k, &[], 0) {
        Sym::Const(v) => v,
        _ => return None,
    };
    let step = match g.element(body, root(&comps[body])?, k, &[], 0) {
        Sym::Step(j, s) if j == k => s,
        _ => return None,
    };
    iterations(&dir, init, limit, step)
}

/// Iterations of `for (i = init; i <dir> limit; i += step)`.
fn iterations(dir: &str, init: i64, limit: i64, step: i64) -> Option<u64> {
    let (init, limit, step) = (i128::from(init), i128::from(limit), i128::from(step));
    let n = match dir {
        "LT" if step > 0 => (limit - init + step - 1).div_euclid(step),
        "LE" if step > 0 => (limit - init).div_euclid(step) + 1,
        "GT" if step < 0 => (init - limit - step - 1).div_euclid(-step),
        "GE" if step < 0 => (init - limit).div_euclid(-step) + 1,
        "NE" if step != 0 && (limit - init) % step == 0 => (limit - init) / step,
        _ => return None,
    };
    u64::try_from(n.max(0)).ok()
}

fn flip(dir: &str) -> Option<String> {
    Some(
        match dir {
            "LT" => "GT",
            "GT" => "LT",
            "LE" => "GE",
            "GE" => "LE",
            "NE" => "NE",
            _ => return None,
        }
        .to_string(),
    )
}

/// `n` of `"known_trip_count":{"n":"28"}` in a JSON backend config.
pub(crate) fn known_trip_count(config: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(config).ok()?;
    let rest = &text[text.find("\"known_trip_count\"")? + "\"known_trip_count\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"n\"")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn root(c: &RawComp<'_>) -> Option<i64> {
    c.root.or_else(|| c.insts.last().map(|i| i.id))
}

/// What a scalar in a loop's condition or body is, as far as counting goes.
#[derive(Clone, Debug, PartialEq)]
enum Sym {
    /// The loop state (parameter 0 of the condition or body).
    State,
    /// Element `k` of the loop state.
    Elem(i64),
    /// Element `k` of the loop state plus a constant.
    Step(i64, i64),
    /// An integer constant.
    Const(i64),
    Unknown,
}

/// A fusion entered on the way: the computation holding it, and it.
type Caller<'a, 'b> = (usize, &'b RawInst<'a>);

/// The fusions entered on the way, innermost last.
type Callers<'a, 'b> = [Caller<'a, 'b>];

const MAX_DEPTH: usize = 64;

struct Graph<'a, 'b> {
    comps: &'b [RawComp<'a>],
    index: &'b HashMap<i64, usize>,
}

impl<'a, 'b> Graph<'a, 'b> {
    fn inst(&self, comp: usize, id: i64) -> Option<&'b RawInst<'a>> {
        self.comps[comp].insts.iter().find(|i| i.id == id)
    }

    /// The fused computation of a fusion and the callers stack inside it.
    fn enter(
        &self,
        comp: usize,
        fusion: &'b RawInst<'a>,
        callers: &Callers<'a, 'b>,
    ) -> Option<(usize, i64, Vec<Caller<'a, 'b>>)> {
        let inner = *self.index.get(fusion.called.first()?)?;
        let mut stack = callers.to_vec();
        stack.push((comp, fusion));
        Some((inner, root(&self.comps[inner])?, stack))
    }

    /// The compare at (or fused under) `id`: direction and both sides.
    fn compare(
        &self,
        comp: usize,
        id: i64,
        callers: &Callers<'a, 'b>,
        depth: usize,
    ) -> Option<(String, Sym, Sym)> {
        let i = self.inst(comp, id)?;
        if depth > MAX_DEPTH {
            return None;
        }
        match i.opcode.as_str() {
            "compare" => Some((
                i.direction.clone(),
                self.eval(comp, *i.operands.first()?, callers, depth + 1),
                self.eval(comp, *i.operands.get(1)?, callers, depth + 1),
            )),
            "fusion" => {
                let (inner, r, stack) = self.enter(comp, i, callers)?;
                self.compare(inner, r, &stack, depth + 1)
            }
            "copy" | "bitcast" | "reshape" => {
                self.compare(comp, *i.operands.first()?, callers, depth + 1)
            }
            _ => None,
        }
    }

    /// Element `k` of the tuple at `id`.
    fn element(
        &self,
        comp: usize,
        id: i64,
        k: i64,
        callers: &Callers<'a, 'b>,
        depth: usize,
    ) -> Sym {
        let Some(i) = self.inst(comp, id) else {
            return Sym::Unknown;
        };
        if depth > MAX_DEPTH {
            return Sym::Unknown;
        }
        match i.opcode.as_str() {
            "tuple" => match usize::try_from(k).ok().and_then(|k| i.operands.get(k)) {
                Some(&op) => self.eval(comp, op, callers, depth + 1),
                None => Sym::Unknown,
            },
            _ => match self.eval(comp, id, callers, depth + 1) {
                Sym::State => Sym::Elem(k),
                _ => Sym::Unknown,
            },
        }
    }

    fn eval(&self, comp: usize, id: i64, callers: &Callers<'a, 'b>, depth: usize) -> Sym {
        let Some(i) = self.inst(comp, id) else {
            return Sym::Unknown;
        };
        if depth > MAX_DEPTH {
            return Sym::Unknown;
        }
        let operand = |n: usize| i.operands.get(n).copied();
        match i.opcode.as_str() {
            "constant" => i.literal.map_or(Sym::Unknown, Sym::Const),
            "parameter" => match callers.split_last() {
                None if i.parameter_number == 0 => Sym::State,
                None => Sym::Unknown,
                Some((&(c, fusion), rest)) => {
                    match usize::try_from(i.parameter_number)
                        .ok()
                        .and_then(|p| fusion.operands.get(p))
                    {
                        Some(&op) => self.eval(c, op, rest, depth + 1),
                        None => Sym::Unknown,
                    }
                }
            },
            "get-tuple-element" => match operand(0) {
                Some(op) => self.element(comp, op, i.tuple_index, callers, depth + 1),
                None => Sym::Unknown,
            },
            "copy" | "bitcast" | "reshape" | "convert" => match operand(0) {
                Some(op) => self.eval(comp, op, callers, depth + 1),
                None => Sym::Unknown,
            },
            "fusion" => match self.enter(comp, i, callers) {
                Some((inner, r, stack)) => self.eval(inner, r, &stack, depth + 1),
                None => Sym::Unknown,
            },
            "add" | "subtract" => {
                let (Some(a), Some(b)) = (operand(0), operand(1)) else {
                    return Sym::Unknown;
                };
                let a = self.eval(comp, a, callers, depth + 1);
                let b = self.eval(comp, b, callers, depth + 1);
                let neg = i.opcode == "subtract";
                match (a, b) {
                    (Sym::Elem(k), Sym::Const(s)) => Sym::Step(k, if neg { -s } else { s }),
                    (Sym::Const(s), Sym::Elem(k)) if !neg => Sym::Step(k, s),
                    (Sym::Const(x), Sym::Const(y)) => Sym::Const(if neg {
                        x.wrapping_sub(y)
                    } else {
                        x.wrapping_add(y)
                    }),
                    _ => Sym::Unknown,
                }
            }
            _ => Sym::Unknown,
        }
    }
}
