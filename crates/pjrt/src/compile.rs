//! Compile options and their `xla.CompileOptionsProto` encoding.
//!
//! The proto is written by hand (a few varint fields), so the crate needs no
//! protoc. Field numbers follow `xla/pjrt/proto/compile_options.proto` and
//! `xla/xla_data.proto` (`DeviceAssignmentProto`).

use crate::plugin::args;
use crate::sys;
use crate::{Error, Result};

/// The `PJRT_Program` of a StableHLO module in MLIR text; borrows `mlir`.
pub(crate) fn mlir_program(mlir: &str) -> sys::PJRT_Program {
    const FORMAT: &str = "mlir";
    args!(PJRT_Program {
        code: mlir.as_ptr() as *mut _,
        code_size: mlir.len(),
        format: FORMAT.as_ptr().cast(),
        format_size: FORMAT.len(),
    })
}

/// How to compile a program.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileOptions {
    /// Number of replicas (data-parallel copies in replica mode). At least 1.
    pub num_replicas: i64,
    /// Number of partitions (SPMD shards). At least 1.
    pub num_partitions: i64,
    /// Partition with SPMD (one program for all partitions).
    pub spmd: bool,
    /// Use Shardy (`sdy.*` annotations); needs `spmd`.
    pub shardy: bool,
    /// Device ids, `[replica][partition]`. `None`: partition `p` on device `p`.
    pub device_assignment: Option<Vec<Vec<i64>>>,
    /// Compile a 1-device executable that can run on any device
    /// ([`crate::LoadedExecutable::execute_on`]).
    pub portable: bool,
    /// XLA option overrides (`env_option_overrides`), e.g. `xla_cpu_...` flags.
    pub xla_options: Vec<(String, XlaOption)>,
}

/// The value of an XLA option override.
#[derive(Clone, Debug, PartialEq)]
pub enum XlaOption {
    /// String value.
    Str(String),
    /// Boolean value.
    Bool(bool),
    /// Integer value.
    Int(i64),
    /// Floating-point value.
    Double(f64),
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self::single()
    }
}

impl CompileOptions {
    /// One replica, one partition.
    pub fn single() -> Self {
        CompileOptions {
            num_replicas: 1,
            num_partitions: 1,
            spmd: false,
            shardy: false,
            device_assignment: None,
            portable: false,
            xla_options: Vec::new(),
        }
    }

    /// `n` SPMD partitions partitioned by Shardy, partition `p` on device `p`.
    pub fn spmd(n: i64) -> Self {
        CompileOptions {
            num_partitions: n,
            spmd: true,
            shardy: true,
            ..Self::single()
        }
    }

    /// A 1-device executable runnable on any device.
    pub fn portable() -> Self {
        CompileOptions {
            portable: true,
            ..Self::single()
        }
    }

    /// Refuses what plugins abort on: non-positive counts, a device
    /// assignment of the wrong shape, duplicate or unknown device ids, Shardy
    /// without SPMD, portable with several devices.
    pub fn validate(&self, device_ids: Option<&[i64]>) -> Result<()> {
        let what = "compile options";
        if self.num_replicas < 1 || self.num_partitions < 1 {
            return Err(Error::invalid(
                what,
                format!(
                    "num_replicas and num_partitions must be at least 1, got {} and {}",
                    self.num_replicas, self.num_partitions
                ),
            ));
        }
        if self.shardy && !self.spmd {
            return Err(Error::invalid(
                what,
                "the Shardy partitioner needs SPMD partitioning",
            ));
        }
        if self.portable
            && (self.num_replicas > 1
                || self.num_partitions > 1
                || self.device_assignment.is_some())
        {
            return Err(Error::invalid(
                what,
                "a portable executable runs on one device: 1 replica, 1 partition, no assignment",
            ));
        }
        let total = self.num_replicas * self.num_partitions;
        if let Some(ids) = device_ids
            && self.device_assignment.is_none()
            && total as usize > ids.len()
        {
            return Err(Error::invalid(
                what,
                format!(
                    "{total} devices needed ({} replicas x {} partitions), the client has {}",
                    self.num_replicas,
                    self.num_partitions,
                    ids.len()
                ),
            ));
        }
        let Some(assignment) = &self.device_assignment else {
            return Ok(());
        };
        if assignment.len() as i64 != self.num_replicas
            || assignment
                .iter()
                .any(|r| r.len() as i64 != self.num_partitions)
        {
            return Err(Error::invalid(
                what,
                format!(
                    "device assignment must be {} replicas x {} partitions",
                    self.num_replicas, self.num_partitions
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for &id in assignment.iter().flatten() {
            if !seen.insert(id) {
                return Err(Error::invalid(
                    what,
                    format!("device {id} appears twice in the device assignment"),
                ));
            }
            if let Some(ids) = device_ids
                && !ids.contains(&id)
            {
                return Err(Error::invalid(
                    what,
                    format!("device {id} in the assignment does not exist; devices are {ids:?}"),
                ));
            }
        }
        Ok(())
    }

    /// The serialized `xla.CompileOptionsProto`.
    pub fn encode(&self) -> Vec<u8> {
        let mut build = Vec::new();
        put_varint_field(&mut build, 4, self.num_replicas as u64);
        put_varint_field(&mut build, 5, self.num_partitions as u64);
        if self.spmd {
            put_varint_field(&mut build, 6, 1);
        }
        if let Some(assignment) = &self.device_assignment {
            put_bytes_field(
                &mut build,
                9,
                &encode_assignment(assignment, self.num_replicas, self.num_partitions),
            );
        }
        if self.shardy {
            put_varint_field(&mut build, 19, 1);
        }
        let mut out = Vec::new();
        put_bytes_field(&mut out, 3, &build);
        if self.portable {
            put_varint_field(&mut out, 4, 1);
        }
        for (key, value) in &self.xla_options {
            let mut v = Vec::new();
            match value {
                XlaOption::Str(s) => put_bytes_field(&mut v, 1, s.as_bytes()),
                XlaOption::Bool(b) => put_varint_field(&mut v, 2, *b as u64),
                XlaOption::Int(i) => put_varint_field(&mut v, 3, *i as u64),
                XlaOption::Double(d) => {
                    put_key(&mut v, 4, 1);
                    v.extend_from_slice(&d.to_le_bytes());
                }
            }
            let mut entry = Vec::new();
            put_bytes_field(&mut entry, 1, key.as_bytes());
            put_bytes_field(&mut entry, 2, &v);
            put_bytes_field(&mut out, 7, &entry);
        }
        out
    }
}

fn encode_assignment(assignment: &[Vec<i64>], replicas: i64, partitions: i64) -> Vec<u8> {
    let mut da = Vec::new();
    put_varint_field(&mut da, 1, replicas as u64);
    put_varint_field(&mut da, 2, partitions as u64);
    for p in 0..partitions as usize {
        let mut ids = Vec::new();
        for replica in assignment {
            put_varint(&mut ids, replica[p] as u64);
        }
        let mut cd = Vec::new();
        put_bytes_field(&mut cd, 1, &ids); // packed repeated int64
        put_bytes_field(&mut da, 3, &cd);
    }
    da
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_device_bytes_match_the_verified_recipe() {
        assert_eq!(
            CompileOptions::single().encode(),
            [0x1a, 0x04, 0x20, 0x01, 0x28, 0x01]
        );
    }

    #[test]
    fn spmd_shardy_bytes_carry_partitions_and_flags() {
        let bytes = CompileOptions::spmd(4).encode();
        // build options: replicas 1, partitions 4, spmd, shardy (the recipe's bytes)
        assert_eq!(
            bytes,
            [
                0x1a, 0x09, 0x20, 0x01, 0x28, 0x04, 0x30, 0x01, 0x98, 0x01, 0x01
            ]
        );
    }

    #[test]
    fn duplicate_devices_are_refused() {
        let mut o = CompileOptions::spmd(2);
        o.device_assignment = Some(vec![vec![3, 3]]);
        let e = o.validate(Some(&[0, 1, 2, 3])).unwrap_err().to_string();
        assert!(e.contains("device 3 appears twice"), "{e}");
    }

    #[test]
    fn wrong_shapes_and_counts_are_refused() {
        let mut o = CompileOptions::spmd(2);
        o.device_assignment = Some(vec![vec![0]]);
        assert!(
            o.validate(None)
                .unwrap_err()
                .to_string()
                .contains("1 replicas x 2 partitions")
        );
        let o = CompileOptions {
            num_partitions: 0,
            ..CompileOptions::single()
        };
        assert!(o.validate(None).is_err());
        let o = CompileOptions::spmd(16);
        assert!(
            o.validate(Some(&[0, 1]))
                .unwrap_err()
                .to_string()
                .contains("the client has 2")
        );
        let o = CompileOptions {
            shardy: true,
            ..CompileOptions::single()
        };
        assert!(o.validate(None).is_err());
    }

    #[test]
    fn unknown_device_is_refused() {
        let mut o = CompileOptions::spmd(2);
        o.device_assignment = Some(vec![vec![0, 9]]);
        assert!(
            o.validate(Some(&[0, 1]))
                .unwrap_err()
                .to_string()
                .contains("device 9")
        );
    }
}
