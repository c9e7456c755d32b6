//! Which physical device sits at each mesh position. On a TPU torus each
//! mesh axis should run along a ring (a physical dimension) so that its
//! collectives use that ring's links: on a v5e 16x16 slice, `tensor` along
//! x and `data`/`fsdp` along y (or the reverse).

use crate::{Error, Mesh, Result};

/// A physical device: its id and torus coordinates (empty for devices
/// without coordinates, e.g. CPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Device id as the runtime numbers it.
    pub id: i64,
    /// `[x, y, z...]` on the torus.
    pub coords: Vec<i64>,
    /// Which slice of a multi-slice job (0 for one slice).
    pub slice: i64,
}

/// Which physical dimension the `tensor` axis runs along.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TorusAxis {
    /// `tensor` along x, `data`/`fsdp` along y.
    #[default]
    X,
    /// `tensor` along y, `data`/`fsdp` along x.
    Y,
}

/// Device ids in mesh order: position `(d, f, t)` of the `[data, fsdp,
/// tensor]` mesh (row-major, `tensor` fastest) holds `result[(d * fsdp + f)
/// * tensor + t]`.
///
/// Devices are ordered with the chosen physical dimension varying fastest,
/// so `tensor` (the innermost axis) walks along it: when `tensor` equals
/// that dimension's length each tensor group is one full ring, and the
/// outer axes step along the other dimension. Several slices are ordered
/// slice by slice, so the outermost mesh axis spans them. Devices without
/// coordinates keep id order.
pub fn device_order(mesh: &Mesh, devices: &[Device], tensor_along: TorusAxis) -> Result<Vec<i64>> {
    if devices.len() as i64 != mesh.devices() {
        return Err(Error::Layout(format!(
            "{} devices for a mesh of {}",
            devices.len(),
            mesh.devices()
        )));
    }
    let mut ids: Vec<&Device> = devices.iter().collect();
    if devices.iter().all(|d| d.coords.len() >= 2) {
        let (fast, slow) = match tensor_along {
            TorusAxis::X => (0, 1),
            TorusAxis::Y => (1, 0),
        };
        // Sort by the remaining dims (z: cores of a chip), then slow, then fast.
        // Slices outermost: the outer (`data`) axis is the one that spans
        // slices, over the data-center network.
        ids.sort_by_key(|d| {
            (
                d.slice,
                d.coords[2..].to_vec(),
                d.coords[slow],
                d.coords[fast],
            )
        });
    } else {
        ids.sort_by_key(|d| d.id);
    }
    let mut seen = std::collections::HashSet::new();
    for d in &ids {
        if !seen.insert(d.id) {
            return Err(Error::Layout(format!("device id {} appears twice", d.id)));
        }
    }
    Ok(ids.iter().map(|d| d.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshConfig;

    /// A slice's devices with ids in a scrambled order (as a runtime may number them).
    fn torus(x: i64, y: i64) -> Vec<Device> {
        let mut v: Vec<Device> = (0..x * y)
            .map(|i| Device {
                id: (i * 7919) % (x * y),
                coords: vec![i % x, i / x, 0],
                slice: 0,
            })
            .collect();
        v.reverse();
        v
    }

    fn coords(devs: &[Device], id: i64) -> (i64, i64) {
        let d = devs.iter().find(|d| d.id == id).unwrap();
        (d.coords[0], d.coords[1])
    }

    #[test]
    fn v5e_16x16_tensor_groups_are_x_rings() {
        let devs = torus(16, 16);
        let m = MeshConfig {
            data: 16,
            fsdp: 1,
            tensor: 16,
        }
        .resolve(256)
        .unwrap();
        let order = device_order(&m, &devs, TorusAxis::X).unwrap();
        for d in 0..16 {
            let group: Vec<(i64, i64)> =
                (0..16).map(|t| coords(&devs, order[d * 16 + t])).collect();
            assert!(
                group.iter().all(|c| c.1 == d as i64),
                "tensor group {d} stays on row y={d}: {group:?}"
            );
            assert_eq!(
                group.iter().map(|c| c.0).collect::<Vec<_>>(),
                (0..16).collect::<Vec<_>>()
            );
        }
        // Each data group (fixed t) is a y ring.
        for t in 0..16 {
            let ys: Vec<i64> = (0..16)
                .map(|d| coords(&devs, order[d * 16 + t]).1)
                .collect();
            assert_eq!(ys, (0..16).collect::<Vec<_>>());
        }
    }

    #[test]
    fn v5e_16x16_reverse_puts_tensor_along_y() {
        let devs = torus(16, 16);
        let m = MeshConfig {
            data: 16,
            fsdp: 1,
            tensor: 16,
        }
        .resolve(256)
        .unwrap();
        let order = device_order(&m, &devs, TorusAxis::Y).unwrap();
        let group: Vec<(i64, i64)> = (0..16).map(|t| coords(&devs, order[3 * 16 + t])).collect();
        assert!(group.iter().all(|c| c.0 == 3), "{group:?}");
    }

    #[test]
    fn two_by_four_fsdp_and_tensor() {
        // v5e 2x4: x has 2 chips, y has 4.
        let devs = torus(2, 4);
        let m = MeshConfig {
            data: 1,
            fsdp: 4,
            tensor: 2,
        }
        .resolve(8)
        .unwrap();
        let order = device_order(&m, &devs, TorusAxis::X).unwrap();
        for f in 0..4 {
            let pair: Vec<(i64, i64)> = (0..2).map(|t| coords(&devs, order[f * 2 + t])).collect();
            assert_eq!(pair, [(0, f as i64), (1, f as i64)]);
        }
    }

    #[test]
    fn coordinate_free_devices_keep_id_order_and_counts_are_checked() {
        let devs: Vec<Device> = (0..8)
            .rev()
            .map(|id| Device {
                id,
                coords: vec![],
                slice: 0,
            })
            .collect();
        let m = MeshConfig {
            data: 2,
            fsdp: 4,
            tensor: 1,
        }
        .resolve(8)
        .unwrap();
        assert_eq!(
            device_order(&m, &devs, TorusAxis::X).unwrap(),
            (0..8).collect::<Vec<_>>()
        );
        let e = device_order(&m, &devs[..4], TorusAxis::X).unwrap_err();
        assert!(e.to_string().contains("4 devices for a mesh of 8"));
    }
}
