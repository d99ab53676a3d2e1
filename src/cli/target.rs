//! What DEVICE names: a path device, an sg node, or a dm-multipath map with paths.

use std::path::{Path, PathBuf};

use serde::Serialize;

use csi_fencer::device::{DeviceError, PathInfo, Resolver, Sysfs};

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
        let (_, kernel_name) = sysfs.kernel_name(device)?;
        let lun = Resolver::new(sysfs.clone(), "mpath-").for_device(device)?;
        let map = lun.map.as_ref().map(|dm| MapInfo {
            name: sysfs.dm_name(dm),
            uuid: sysfs.dm_uuid(dm),
        });
        Ok(Target {
            device: device.to_path_buf(),
            kernel_name,
            map,
            paths: lun.paths,
        })
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
