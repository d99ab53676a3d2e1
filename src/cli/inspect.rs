//! `csi-fencer inspect DEVICE`: everything about a LUN's identity and
//! reservation in one screen, using only commands that change nothing.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Serialize, Serializer};

use csi_fencer::device::PathInfo;
use csi_fencer::scsi::inquiry::StandardInquiry;
use csi_fencer::scsi::{
    Capabilities, Designation, Designator, FullStatus, ReadKeys, ReadReservation, Wwid,
};
use csi_fencer::transport::{Refusal, ScsiError, ScsiPath, Transport};

use super::exit::Failure;
use super::target::Target;
use super::{render, GlobalArgs};
use csi_fencer::device::MapNames;

/// Arguments of `csi-fencer inspect`.
#[derive(Debug, Args)]
#[command(after_help = "\
Sends only INQUIRY and PERSISTENT RESERVE IN commands: safe on a live system.
Through a multipath map, identity is read on every path, so a path that leads to \
another LUN shows as a MISMATCH (csi-fencer never registers on such a path).

Examples:
  csi-fencer inspect /dev/mapper/mpatha
  csi-fencer inspect /dev/sdc --json")]
pub struct InspectArgs {
    /// A path device (/dev/sdc, /dev/sg2) or a dm-multipath map (/dev/dm-0, /dev/mapper/NAME).
    pub device: PathBuf,
}

/// A part of the report that may have failed on its own.
#[derive(Debug)]
pub struct Section<T>(Result<T, String>);

impl<T: Serialize> Serialize for Section<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Err<'a> {
            error: &'a str,
        }
        match &self.0 {
            Ok(v) => v.serialize(s),
            Err(e) => Err { error: e }.serialize(s),
        }
    }
}

impl<T> From<Result<T, ScsiError>> for Section<T> {
    fn from(r: Result<T, ScsiError>) -> Self {
        Section(r.map_err(|e| e.to_string()))
    }
}

/// One path's identity as read through it.
#[derive(Debug, Serialize)]
pub struct PathReport {
    /// sysfs facts.
    #[serde(flatten)]
    pub info: PathInfo,
    /// The LU WWID this path reports (VPD 83h).
    pub wwid: Section<Option<Wwid>>,
    /// Relative target port, from VPD 83h.
    pub relative_target_port: Option<u16>,
    /// Target port group, from VPD 83h.
    pub target_port_group: Option<u16>,
    /// True when the path's WWID equals the device's.
    pub identity_matches: Option<bool>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// DEVICE as given.
    pub device: PathBuf,
    /// Kernel name.
    pub kernel_name: String,
    /// The dm map, if any.
    pub map: Option<MapNames>,
    /// Standard INQUIRY.
    pub inquiry: Section<StandardInquiry>,
    /// VPD 80h.
    pub serial: Section<String>,
    /// VPD 83h designators.
    pub designators: Section<Vec<Designation>>,
    /// The LU's WWID.
    pub wwid: Option<Wwid>,
    /// Every path.
    pub paths: Vec<PathReport>,
    /// REPORT CAPABILITIES.
    pub capabilities: Section<Capabilities>,
    /// READ KEYS.
    pub keys: Section<ReadKeys>,
    /// READ RESERVATION.
    pub reservation: Section<ReadReservation>,
    /// READ FULL STATUS.
    pub full_status: Section<FullStatus>,
}

fn port_ids(ds: &[Designation]) -> (Option<u16>, Option<u16>) {
    let mut rtp = None;
    let mut tpg = None;
    for d in ds {
        match d.designator {
            Designator::RelativeTargetPort { port } => rtp = Some(port),
            Designator::TargetPortGroup { group } => tpg = Some(group),
            _ => {}
        }
    }
    (rtp, tpg)
}

fn path_report(t: &dyn Transport, info: PathInfo, lu: Option<&Wwid>, g: &GlobalArgs) -> PathReport {
    let ds = ScsiPath::new(t, &info.dev, g.timeout()).device_id();
    let (wwid, rtp, tpg) = match &ds {
        Ok(ds) => {
            let (r, p) = port_ids(ds);
            (Ok(Wwid::from_designations(ds)), r, p)
        }
        Err(e) => (Err(e.to_string()), None, None),
    };
    let identity_matches = match (&wwid, lu) {
        (Ok(w), Some(lu)) => Some(w.as_ref() == Some(lu)),
        _ => None,
    };
    PathReport {
        info,
        wwid: Section(wwid),
        relative_target_port: rtp,
        target_port_group: tpg,
        identity_matches,
    }
}

/// Collects the inspection of `device`.
pub fn inspect(t: &dyn Transport, device: &Path, g: &GlobalArgs) -> Result<Inspection, Failure> {
    let target = Target::resolve(device)?;
    let mut p = ScsiPath::new(t, device, g.timeout());
    // A device that is not SCSI at all fails here with a clear error. A
    // platform that cannot carry standard INQUIRY (Windows' IOCTLs) goes on:
    // the identity and the PR state still come through.
    let inquiry = match p.inquiry() {
        Err(
            e @ ScsiError::Unsupported {
                by: Refusal::Platform(_),
                ..
            },
        ) => Err(e),
        Err(e) => return Err(e.into()),
        Ok(i) => Ok(i),
    };
    let designators = p.device_id();
    let wwid = designators
        .as_ref()
        .ok()
        .and_then(|d| Wwid::from_designations(d));
    let paths = target
        .paths
        .iter()
        .cloned()
        .map(|info| path_report(t, info, wwid.as_ref(), g))
        .collect();
    Ok(Inspection {
        device: device.to_path_buf(),
        kernel_name: target.kernel_name,
        map: target.map,
        inquiry: inquiry.into(),
        serial: p.serial().into(),
        designators: designators.into(),
        wwid,
        paths,
        capabilities: p.capabilities().into(),
        keys: p.read_keys().into(),
        reservation: p.read_reservation().into(),
        full_status: p.full_status().into(),
    })
}

/// Runs `csi-fencer inspect`.
pub fn run(args: &InspectArgs, g: &GlobalArgs, t: &dyn Transport) -> Result<i32, Failure> {
    let r = inspect(t, &args.device, g)?;
    if g.json {
        let s = serde_json::to_string_pretty(&r).map_err(|e| Failure::new(99, e))?;
        println!("{s}");
    } else {
        print!("{}", text(&r));
    }
    let mismatch = r.paths.iter().any(|p| p.identity_matches == Some(false));
    Ok(if mismatch { super::exit::OTHER } else { 0 })
}

fn section<T>(s: &Section<T>, f: impl Fn(&T) -> String) -> String {
    match &s.0 {
        Ok(v) => f(v),
        Err(e) => format!("unavailable: {e}"),
    }
}

fn indent(s: &str) -> String {
    s.replace('\n', "\n             ")
}

/// The one-screen text form.
pub fn text(r: &Inspection) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    let map = match &r.map {
        Some(m) => format!(
            ", dm-multipath map {} (uuid {})",
            m.name.as_deref().unwrap_or("?"),
            m.uuid.as_deref().unwrap_or("none")
        ),
        None => String::new(),
    };
    line(
        "Device",
        format!("{} ({}{map})", r.device.display(), r.kernel_name),
    );
    line(
        "Product",
        section(&r.inquiry, |i| {
            format!(
                "{} {} {} (SPC version {}, TPGS {})",
                i.vendor, i.product, i.revision, i.version, i.tpgs
            )
        }),
    );
    line("Serial", section(&r.serial, |s| s.clone()));
    line(
        "WWID",
        match &r.wwid {
            Some(w) => format!("{w}  (multipath: {})", w.multipath_form()),
            None => "none found in VPD 83h".into(),
        },
    );
    line("Paths", format!("{}", r.paths.len()));
    for p in &r.paths {
        line("", path_line(p));
    }
    line(
        "Capability",
        indent(&section(&r.capabilities, render::capabilities)),
    );
    line("Keys", indent(&section(&r.keys, render::keys)));
    line("Reservation", section(&r.reservation, render::reservation));
    line(
        "Full status",
        indent(&section(&r.full_status, render::full_status)),
    );
    out
}

fn path_line(p: &PathReport) -> String {
    let id = match (&p.wwid.0, p.identity_matches) {
        (Err(e), _) => format!("identity unreadable: {e}"),
        (Ok(_), Some(true)) => "identity ok".into(),
        (Ok(w), Some(false)) => format!(
            "IDENTITY MISMATCH: reports {}",
            w.as_ref()
                .map(|w| w.to_string())
                .unwrap_or_else(|| "no WWID".into())
        ),
        (Ok(_), None) => "identity not compared".into(),
    };
    format!(
        "{:<6} {:<10} {:<10} rel port {:<4} tpg {:<4} {id}",
        p.info.name,
        p.info.hctl.as_deref().unwrap_or("-"),
        p.info.state.as_deref().unwrap_or("-"),
        p.relative_target_port
            .map(|v| v.to_string())
            .unwrap_or("-".into()),
        p.target_port_group
            .map(|v| v.to_string())
            .unwrap_or("-".into()),
    )
}
