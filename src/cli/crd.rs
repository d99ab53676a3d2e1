//! `csi-fencer crd`: the VolumeReservation CRD, as the chart ships it.

use super::exit::Failure;

/// Prints the CRD YAML.
pub fn run() -> Result<i32, Failure> {
    let y = csi_fencer::k8s::crd::crd_yaml().map_err(|e| Failure::new(99, e))?;
    print!("{y}");
    Ok(0)
}
