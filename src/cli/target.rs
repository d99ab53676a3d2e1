//! What DEVICE names: a path device, an sg node, or a dm-multipath map with paths.

use std::path::{Path, PathBuf};

use serde::Serialize;

use csi_fencer::device::{DeviceError, NodeKind, PathInfo, Sysfs};

/// A resolved DEVICE argument.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The path as given.
    pub device: PathBuf,
    /// Kernel name (`dm-0`, `sdc`, `sg2`).
    pub kernel_name: String,
    /// The dm map, when DEVICE is a device-mapper device.
    pub map: Option<MapInfo>,
    /// The path devices: the map's slaves, or DEVICE itself.
    pub paths: Vec<PathInfo>,
}

/// A device-mapper map.
#[derive(Debug, Clone, Serialize)]
pub struct MapInfo {
    /// dm name (`/dev/mapper/<name>`).
    pub name: Option<String>,
    /// dm uuid (`mpath-<wwid>` for multipath-tools maps).
    pub uuid: Option<String>,
}

impl Target {
    /// Resolves `device` through sysfs.
    pub fn resolve(sysfs: &Sysfs, device: &Path) -> Result<Target, DeviceError> {
        let (kind, name) = sysfs.kernel_name(device)?;
        let mut t = Target {
            device: device.to_path_buf(),
            kernel_name: name.clone(),
            map: None,
            paths: Vec::new(),
        };
        if kind == NodeKind::Block && sysfs.is_dm(&name) {
            t.map = Some(MapInfo {
                name: sysfs.dm_name(&name),
                uuid: sysfs.dm_uuid(&name),
            });
            t.paths = sysfs
                .slaves(&name)
                .iter()
                .map(|s| sysfs.path_info(s))
                .collect();
        } else {
            let block = match kind {
                NodeKind::Char => sysfs.block_of_sg(&name),
                NodeKind::Block => Some(name.clone()),
            };
            let mut info = block
                .map(|b| sysfs.path_info(&b))
                .unwrap_or_else(|| PathInfo {
                    name: name.clone(),
                    dev: device.to_path_buf(),
                    hctl: None,
                    state: None,
                });
            // Send to the node the operator named (an sg node stays an sg node).
            info.dev = device.to_path_buf();
            t.paths.push(info);
        }
        Ok(t)
    }

    /// True for a dm map (SG_IO through it reaches only one of its paths).
    pub fn is_map(&self) -> bool {
        self.map.is_some()
    }

    /// The device nodes a command goes to: every path with `all_paths` on a
    /// map, otherwise DEVICE itself.
    pub fn destinations(&self, all_paths: bool) -> Vec<PathBuf> {
        if all_paths && self.is_map() {
            self.paths.iter().map(|p| p.dev.clone()).collect()
        } else {
            vec![self.device.clone()]
        }
    }
}
