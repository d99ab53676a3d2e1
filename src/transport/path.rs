//! Typed commands on one path, with bounded retries of the conditions that
//! guarantee the command was not executed (UNIT ATTENTION, NOT READY 04/07).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{CommandId, HostStatus, Refusal};
use super::{Completion, ScsiError, Transport};
use crate::scsi::prin::{self, Reissue};
use crate::scsi::{
    cdb, inquiry, Capabilities, Command, Designation, FullStatus, ParseError, PrInAction, PrOut,
    ReadKeys, ReadReservation, ScsiStatus, Sense, SenseKey,
};

/// How often and how long to retry conditions that mean "not executed, try again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after a UNIT ATTENTION (each one is consumed by the failed attempt).
    pub unit_attention: u32,
    /// Retries after NOT READY 04/07 or 04/0A, BUSY or TASK SET FULL.
    pub not_ready: u32,
    /// Pause before each not-ready retry.
    pub not_ready_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            // Several UAs can be queued on one nexus (reset, then preempted …).
            unit_attention: 4,
            not_ready: 5,
            not_ready_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// No retries at all: every condition is reported as it comes.
    pub fn none() -> Self {
        RetryPolicy {
            unit_attention: 0,
            not_ready: 0,
            not_ready_delay: Duration::ZERO,
        }
    }
}

/// One device path (an I_T nexus, or a dm device that forwards to one).
pub struct ScsiPath<'t> {
    transport: &'t dyn Transport,
    device: PathBuf,
    timeout: Duration,
    retry: RetryPolicy,
    unit_attentions: Vec<Sense>,
    on_unit_attention: Option<&'t dyn Fn(&Sense)>,
    on_lost_answer: Option<&'t dyn Fn()>,
}

impl<'t> ScsiPath<'t> {
    /// Commands to `device` through `transport`, each bounded by `timeout`.
    pub fn new(transport: &'t dyn Transport, device: impl AsRef<Path>, timeout: Duration) -> Self {
        ScsiPath {
            transport,
            device: device.as_ref().to_path_buf(),
            timeout,
            retry: RetryPolicy::default(),
            unit_attentions: Vec::new(),
            on_unit_attention: None,
            on_lost_answer: None,
        }
    }

    /// Calls `f` the moment a unit attention is consumed, before the retry:
    /// what it tells (a reset dropped the registrations) must be kept even if
    /// nothing after it runs.
    pub fn on_unit_attention(mut self, f: &'t dyn Fn(&Sense)) -> Self {
        self.on_unit_attention = Some(f);
        self
    }

    /// Calls `f` when a command's answer does not come back in time: the
    /// command may have run, and a unit attention it consumed is gone with
    /// the answer.
    pub fn on_lost_answer(mut self, f: &'t dyn Fn()) -> Self {
        self.on_lost_answer = Some(f);
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The device path.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The unit attentions consumed (and retried past) so far, oldest first.
    /// 2A/03..2A/05 among them tell this nexus its registration or reservation changed.
    pub fn unit_attentions(&self) -> &[Sense] {
        &self.unit_attentions
    }

    /// Runs `cmd`, retrying within the policy; returns the data received.
    pub fn run(&mut self, cmd: &Command) -> Result<Vec<u8>, ScsiError> {
        let (mut ua_left, mut nr_left) = (self.retry.unit_attention, self.retry.not_ready);
        loop {
            let done = self
                .transport
                .execute(&self.device, cmd, self.timeout)
                .and_then(|done| classify(&self.device, cmd, done, self.timeout));
            if let (Err(ScsiError::Timeout { .. }), Some(f)) = (&done, self.on_lost_answer) {
                f();
            }
            match done {
                Err(ScsiError::CheckCondition { sense, .. })
                    if sense.is_unit_attention() && ua_left > 0 =>
                {
                    ua_left -= 1;
                    if let Some(f) = self.on_unit_attention {
                        f(&sense);
                    }
                    self.unit_attentions.push(sense);
                }
                Err(e) if is_transient(&e) && nr_left > 0 => {
                    nr_left -= 1;
                    std::thread::sleep(self.retry.not_ready_delay);
                }
                other => return other,
            }
        }
    }

    fn parsed<T>(
        &mut self,
        cmd: &Command,
        parse: fn(&[u8]) -> Result<T, ParseError>,
    ) -> Result<T, ScsiError> {
        let data = self.run(cmd)?;
        parse(&data).map_err(|source| ScsiError::Parse {
            device: self.device.clone(),
            command: cmd.into(),
            source: Box::new(source),
        })
    }

    /// PR IN that re-reads at the announced length when the first buffer was short.
    fn prin_full<T>(
        &mut self,
        action: PrInAction,
        parse: fn(&[u8]) -> Result<T, ParseError>,
    ) -> Result<T, ScsiError> {
        let mut alloc = match action {
            PrInAction::ReadFullStatus => prin::FULL_STATUS_ALLOCATION,
            _ => prin::DEFAULT_ALLOCATION,
        };
        // Registrations can grow between two reads; three rounds is plenty.
        for _ in 0..3 {
            let cmd = prin::command(action, alloc);
            let data = self.run(&cmd)?;
            match prin::reissue(&data, alloc as usize) {
                Reissue::With(n) => alloc = n,
                Reissue::Complete | Reissue::TooLarge(_) => {
                    return parse(&data).map_err(|source| ScsiError::Parse {
                        device: self.device.clone(),
                        command: (&cmd).into(),
                        source: Box::new(source),
                    })
                }
            }
        }
        let cmd = prin::command(action, alloc);
        self.parsed(&cmd, parse)
    }

    /// READ KEYS, complete however many keys there are (up to 8190).
    pub fn read_keys(&mut self) -> Result<ReadKeys, ScsiError> {
        self.prin_full(PrInAction::ReadKeys, prin::parse_read_keys)
    }

    /// READ RESERVATION.
    pub fn read_reservation(&mut self) -> Result<ReadReservation, ScsiError> {
        self.parsed(
            &prin::command(PrInAction::ReadReservation, 24),
            prin::parse_read_reservation,
        )
    }

    /// REPORT CAPABILITIES.
    pub fn capabilities(&mut self) -> Result<Capabilities, ScsiError> {
        self.parsed(
            &prin::command(PrInAction::ReportCapabilities, 8),
            prin::parse_capabilities,
        )
    }

    /// READ FULL STATUS, complete.
    pub fn full_status(&mut self) -> Result<FullStatus, ScsiError> {
        self.prin_full(PrInAction::ReadFullStatus, prin::parse_full_status)
    }

    /// Sends one PR OUT.
    pub fn prout(&mut self, p: &PrOut) -> Result<(), ScsiError> {
        self.run(&p.command()).map(|_| ())
    }

    /// TEST UNIT READY (no retries of its own beyond the policy).
    pub fn test_unit_ready(&mut self) -> Result<(), ScsiError> {
        self.run(&cdb::test_unit_ready()).map(|_| ())
    }

    /// Standard INQUIRY.
    pub fn inquiry(&mut self) -> Result<inquiry::StandardInquiry, ScsiError> {
        self.parsed(&inquiry::standard_command(96), inquiry::parse_standard)
    }

    /// VPD 83h designators.
    pub fn device_id(&mut self) -> Result<Vec<Designation>, ScsiError> {
        self.parsed(
            &inquiry::vpd_command(inquiry::page::DEVICE_ID, inquiry::DEFAULT_ALLOCATION),
            inquiry::parse_device_id,
        )
    }

    /// VPD 80h unit serial number.
    pub fn serial(&mut self) -> Result<String, ScsiError> {
        self.parsed(
            &inquiry::vpd_command(inquiry::page::SERIAL, 255),
            inquiry::parse_serial,
        )
    }

    /// VPD 00h supported pages.
    pub fn supported_pages(&mut self) -> Result<Vec<u8>, ScsiError> {
        self.parsed(
            &inquiry::vpd_command(inquiry::page::SUPPORTED, 255),
            inquiry::parse_supported_pages,
        )
    }
}

fn is_transient(e: &ScsiError) -> bool {
    match e {
        ScsiError::CheckCondition { sense, .. } => sense.is_transient_not_ready(),
        ScsiError::Status { status, .. } => {
            matches!(status, ScsiStatus::Busy | ScsiStatus::TaskSetFull)
        }
        _ => false,
    }
}

/// Judges a completion: the data on success, or the error that names why not.
pub fn classify(
    device: &Path,
    cmd: &Command,
    done: Completion,
    timeout: Duration,
) -> Result<Vec<u8>, ScsiError> {
    let device = device.to_path_buf();
    let command = CommandId::from(cmd);
    match done.host_status {
        HostStatus::Ok => {}
        HostStatus::TimeOut => {
            return Err(ScsiError::Timeout {
                device,
                command,
                after: timeout,
            })
        }
        host => {
            return Err(ScsiError::Transport {
                device,
                command,
                host,
            })
        }
    }
    match done.status {
        ScsiStatus::Good | ScsiStatus::ConditionMet => Ok(done.data),
        ScsiStatus::ReservationConflict => Err(ScsiError::ReservationConflict { device, command }),
        ScsiStatus::CheckCondition => {
            let sense = match Sense::parse(&done.sense) {
                Ok(s) => s,
                Err(why) => {
                    return Err(ScsiError::BadSense {
                        device,
                        command,
                        raw: crate::scsi::error::hex(&done.sense),
                        why: Box::new(why),
                    })
                }
            };
            let is_pr = matches!(cmd.cdb.opcode(), prin::OPCODE | crate::scsi::prout::OPCODE);
            if sense.key == SenseKey::RecoveredError {
                Ok(done.data) // completed, with recovery
            } else if is_pr && (sense.is_invalid_opcode() || sense.is_invalid_field_in_cdb()) {
                Err(ScsiError::Unsupported {
                    device,
                    command,
                    by: Refusal::Sense(sense),
                })
            } else {
                Err(ScsiError::CheckCondition {
                    device,
                    command,
                    sense,
                })
            }
        }
        status => Err(ScsiError::Status {
            device,
            command,
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{BasicParams, ReservationKey};
    use crate::transport::scripted::Scripted;

    const T: Duration = Duration::from_secs(5);

    fn ua(asc: u8, ascq: u8) -> Completion {
        Completion::check_condition(Sense::fixed(SenseKey::UnitAttention, asc, ascq))
    }

    #[test]
    fn unit_attention_is_retried_and_recorded() {
        let s = Scripted::new(vec![
            ua(0x2a, 0x05),
            ua(0x29, 0x00),
            Completion::good(vec![]),
        ]);
        let mut p = ScsiPath::new(&s, "/dev/sdx", T);
        p.test_unit_ready().unwrap();
        let uas: Vec<_> = p
            .unit_attentions()
            .iter()
            .map(|u| (u.asc, u.ascq))
            .collect();
        assert_eq!(uas, vec![(0x2a, 0x05), (0x29, 0x00)]);
        assert!(p.unit_attentions()[0].is_reservation_change());
        assert_eq!(s.sent().len(), 3);
    }

    #[test]
    fn unit_attention_retries_are_bounded() {
        let s = Scripted::new(vec![ua(0x29, 0); 10]);
        let mut p = ScsiPath::new(&s, "/dev/sdx", T);
        let e = p.test_unit_ready().unwrap_err();
        assert_eq!(e.kind(), "check_condition");
        assert_eq!(
            s.sent().len(),
            1 + RetryPolicy::default().unit_attention as usize
        );
    }

    #[test]
    fn not_ready_in_progress_is_retried_after_a_pause() {
        let nr = Completion::check_condition(Sense::fixed(SenseKey::NotReady, 0x04, 0x07));
        let s = Scripted::new(vec![nr, Completion::good(vec![])]);
        let mut p = ScsiPath::new(&s, "/dev/sdx", T).with_retry(RetryPolicy {
            not_ready_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        });
        p.test_unit_ready().unwrap();
        assert_eq!(s.sent().len(), 2);
    }

    #[test]
    fn conflict_is_not_retried_and_names_the_command() {
        let s = Scripted::new(vec![Completion::with_status(
            ScsiStatus::ReservationConflict,
        )]);
        let mut p = ScsiPath::new(&s, "/dev/sdc", T);
        let e = p
            .prout(&PrOut::Register(BasicParams {
                sa_key: ReservationKey(0xa),
                ..Default::default()
            }))
            .unwrap_err();
        assert_eq!(e.kind(), "reservation_conflict");
        let msg = e.to_string();
        assert!(msg.contains("/dev/sdc"), "{msg}");
        assert!(
            msg.contains("PERSISTENT RESERVE OUT / REGISTER [cdb 5f 00"),
            "{msg}"
        );
        assert_eq!(s.sent().len(), 1);
    }

    #[test]
    fn invalid_opcode_on_pr_means_unsupported() {
        let inv = Completion::check_condition(Sense::fixed(SenseKey::IllegalRequest, 0x20, 0));
        let s = Scripted::new(vec![inv]);
        let e = ScsiPath::new(&s, "/dev/sdd", T).read_keys().unwrap_err();
        assert_eq!(e.kind(), "unsupported");
        assert!(e
            .to_string()
            .contains("persistent reservations not supported"));
    }

    #[test]
    fn read_keys_reissues_with_the_announced_length() {
        let mut first = vec![0, 0, 0, 1, 0, 0, 0x10, 0]; // 4096 bytes of keys announced
        first.resize(prin::DEFAULT_ALLOCATION as usize, 0);
        let mut full = vec![0, 0, 0, 1, 0, 0, 0x10, 0];
        full.extend((0..512u64).flat_map(|k| (k + 1).to_be_bytes()));
        let s = Scripted::new(vec![Completion::good(first), Completion::good(full)]);
        let keys = ScsiPath::new(&s, "/dev/sdx", T).read_keys().unwrap();
        assert_eq!(keys.keys.len(), 512);
        let sent = s.sent();
        assert_eq!(&sent[1].cdb.as_bytes()[7..9], &[0x10, 0x08]);
    }

    #[test]
    fn host_failures_and_garbage_are_errors_not_panics() {
        let mut c = Completion::good(vec![]);
        c.host_status = HostStatus::TransportFailfast;
        let s = Scripted::new(vec![c, Completion::check_condition(vec![0x01, 0x02])]);
        let mut p = ScsiPath::new(&s, "/dev/sdx", T);
        assert_eq!(p.test_unit_ready().unwrap_err().kind(), "transport");
        assert_eq!(p.test_unit_ready().unwrap_err().kind(), "bad_sense");
        let s = Scripted::new(vec![Completion::good(vec![0, 0, 0])]);
        let e = ScsiPath::new(&s, "/dev/sdx", T)
            .read_reservation()
            .unwrap_err();
        assert_eq!(e.kind(), "malformed_response", "{e}");
    }
}
