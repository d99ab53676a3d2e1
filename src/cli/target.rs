//! What DEVICE names: a path device, an sg node, or a dm-multipath map with paths.

use std::path::{Path, PathBuf};

use serde::Serialize;

use csi_fencer::device::{DeviceError, MapNames, PathInfo};
use csi_fencer::platform;

/// A resolved DEVICE argument.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The path as given.
    pub device: PathBuf,
    /// Kernel name (`dm-0`, `sdc`, `sg2`).
    pub kernel_name: String,
    /// The dm map, when DEVICE is a device-mapper device.
    pub map: Option<MapNames>,
    /// The path devices: the map's slaves, or DEVICE itself.
    pub paths: Vec<PathInfo>,
}

impl Target {
    /// Resolves `device` as the system shows it.
    pub fn resolve(device: &Path) -> Result<Target, DeviceError> {
        let d = platform::describe(device)?;
        Ok(Target {
            device: device.to_path_buf(),
            kernel_name: d.kernel_name,
            map: d.map,
            paths: d.lun.paths,
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
