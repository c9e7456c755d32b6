//! Named option values (`PJRT_NamedValue`) for clients and topologies, with
//! the type checks that keep plugins from aborting on a wrongly typed value.

use std::ffi::c_char;

use crate::sys;
use crate::{Error, Result};

/// The value of a named option passed to a plugin.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// A string.
    Str(String),
    /// A 64-bit integer.
    Int(i64),
    /// A list of 64-bit integers.
    Ints(Vec<i64>),
    /// A 32-bit float.
    Float(f32),
    /// A boolean.
    Bool(bool),
}

impl OptionValue {
    /// The name of the value's type, as errors print it.
    pub fn type_name(&self) -> &'static str {
        match self {
            OptionValue::Str(_) => "a string",
            OptionValue::Int(_) => "an int64",
            OptionValue::Ints(_) => "an int64 list",
            OptionValue::Float(_) => "a float",
            OptionValue::Bool(_) => "a bool",
        }
    }
}

impl From<i64> for OptionValue {
    fn from(v: i64) -> Self {
        OptionValue::Int(v)
    }
}
impl From<bool> for OptionValue {
    fn from(v: bool) -> Self {
        OptionValue::Bool(v)
    }
}
impl From<f32> for OptionValue {
    fn from(v: f32) -> Self {
        OptionValue::Float(v)
    }
}
impl From<&str> for OptionValue {
    fn from(v: &str) -> Self {
        OptionValue::Str(v.to_owned())
    }
}
impl From<Vec<i64>> for OptionValue {
    fn from(v: Vec<i64>) -> Self {
        OptionValue::Ints(v)
    }
}

/// Options whose type is known: a value of another type is refused here,
/// because some plugins abort the process on it (`std::bad_variant_access`).
const KNOWN: &[(&str, &str)] = &[
    ("cpu_device_count", "an int64"),
    ("asynchronous", "a bool"),
    ("process_id", "an int64"),
    ("node_id", "an int64"),
    ("num_nodes", "an int64"),
    ("visible_devices", "an int64 list"),
    ("platform_name", "a string"),
    ("allocator", "a string"),
    ("memory_fraction", "a float"),
    ("preallocate", "a bool"),
    ("chip_config_name", "a string"),
    ("chips_per_host_bounds", "an int64 list"),
    ("host_bounds", "an int64 list"),
    ("num_slices", "an int64"),
    ("wrap", "an int64 list"),
];

/// Checks option names and types; refuses non-positive device counts.
pub(crate) fn validate(options: &[(String, OptionValue)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (name, value) in options {
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid(
                "plugin options",
                format!("option `{name}` given twice"),
            ));
        }
        if let Some((_, expected)) = KNOWN.iter().find(|(n, _)| n == name)
            && *expected != value.type_name()
        {
            return Err(Error::OptionType {
                name: name.clone(),
                expected,
                found: value.type_name(),
            });
        }
        if let ("cpu_device_count" | "num_nodes" | "num_slices", OptionValue::Int(n)) =
            (name.as_str(), value)
            && *n < 1
        {
            return Err(Error::invalid(
                "plugin options",
                format!("`{name}` must be at least 1, got {n}"),
            ));
        }
    }
    Ok(())
}

/// `PJRT_NamedValue`s pointing into `options`, which must outlive them.
pub(crate) fn to_raw(options: &[(String, OptionValue)]) -> Vec<sys::PJRT_NamedValue> {
    options
        .iter()
        .map(|(name, value)| {
            // SAFETY: all-zero is a valid PJRT_NamedValue.
            let mut nv: sys::PJRT_NamedValue = unsafe { std::mem::zeroed() };
            nv.struct_size = std::mem::size_of::<sys::PJRT_NamedValue>();
            nv.name = name.as_ptr().cast::<c_char>();
            nv.name_size = name.len();
            match value {
                OptionValue::Str(s) => {
                    nv.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kString;
                    nv.__bindgen_anon_1.string_value = s.as_ptr().cast::<c_char>();
                    nv.value_size = s.len();
                }
                OptionValue::Int(i) => {
                    nv.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64;
                    nv.__bindgen_anon_1.int64_value = *i;
                    nv.value_size = 1;
                }
                OptionValue::Ints(v) => {
                    nv.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64List;
                    nv.__bindgen_anon_1.int64_array_value = v.as_ptr();
                    nv.value_size = v.len();
                }
                OptionValue::Float(f) => {
                    nv.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kFloat;
                    nv.__bindgen_anon_1.float_value = *f;
                    nv.value_size = 1;
                }
                OptionValue::Bool(b) => {
                    nv.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kBool;
                    nv.__bindgen_anon_1.bool_value = *b;
                    nv.value_size = 1;
                }
            }
            nv
        })
        .collect()
}

/// Reads `PJRT_NamedValue`s owned by the plugin (device attributes).
pub(crate) fn from_raw(
    values: *const sys::PJRT_NamedValue,
    n: usize,
) -> Vec<(String, OptionValue)> {
    if values.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: the plugin hands out `n` named values at `values`.
    let values = unsafe { std::slice::from_raw_parts(values, n) };
    values
        .iter()
        .filter_map(|nv| {
            let name = crate::plugin::string_from(nv.name, nv.name_size);
            // SAFETY: the union member read is the one `type_` names.
            let value = unsafe {
                match nv.type_ {
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kString => OptionValue::Str(
                        crate::plugin::string_from(nv.__bindgen_anon_1.string_value, nv.value_size),
                    ),
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64 => {
                        OptionValue::Int(nv.__bindgen_anon_1.int64_value)
                    }
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64List => {
                        let p = nv.__bindgen_anon_1.int64_array_value;
                        if p.is_null() {
                            OptionValue::Ints(Vec::new())
                        } else {
                            OptionValue::Ints(std::slice::from_raw_parts(p, nv.value_size).to_vec())
                        }
                    }
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kFloat => {
                        OptionValue::Float(nv.__bindgen_anon_1.float_value)
                    }
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kBool => {
                        OptionValue::Bool(nv.__bindgen_anon_1.bool_value)
                    }
                    _ => return None,
                }
            };
            Some((name, value))
        })
        .collect()
}
